"""Training data: parallel corpora (stage 1), distillation groups (stage 2), batching.

Rows are plain dicts. Parallel rows hold ``english`` and ``non_english``; distillation
rows hold ``query``, ``pos``, ``pos_scores``, ``neg``, ``neg_scores``. Sources are hub
dataset ids (``datasets.load_dataset``), local JSONL/Parquet/CSV/TSV files, the
line-aligned Tatoeba and NTREX-128 folders, gettext catalogues (English ``msgid`` to
translated ``msgstr``), CLDR display names (territories, languages, currencies,
cities, months, days; the ``babel`` package), CLDR emoji annotations (names and keywords
paired by emoji) and bilingual dictionaries (CC-CEDICT, JMdict, FreeDict: word-level
English gloss -> headword).

>>> rows = [{"english": "a cat", "non_english": "eine Katze"}]
>>> batches = LengthGroupedBatches([len(r["english"]) for r in rows], batch_size=4, seed=0)
>>> batches.epoch(0)
[[0]]
"""

from __future__ import annotations

import gettext
import gzip
import json
import os
import random
import re
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

PARALLEL_COLUMNS = ("english", "non_english")
DISTILLATION_COLUMNS = ("query", "pos", "pos_scores", "neg", "neg_scores")
LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv",
                 ".tsv": "csv"}
NTREX_ENGLISH = "newstest2019-src.eng.txt"
NTREX_DOCUMENT_IDS = "DOCUMENT_IDS.tsv"

Row = dict[str, Any]


class TrainingDataError(ValueError):
    """A training source or record is unusable; the message names the record and field."""


# ---------------------------------------------------------------- sources


def load_rows(source: str, columns: Sequence[str], split: str = "train") -> Sequence[Row]:
    """Rows of a local file/folder (JSONL, Parquet, CSV, TSV) or of a hub dataset id.

    Every row must carry ``columns``; a missing column is reported with the source.
    """
    import datasets

    path = Path(source).expanduser()
    if path.exists():
        builder, files, extra = _local_builder(path)
        dataset = datasets.load_dataset(builder, data_files=files, split="train", **extra)
    else:
        try:
            dataset = datasets.load_dataset(source, split=split)
        except Exception as exc:  # offline machines, unknown ids, gated sets
            raise TrainingDataError(
                f"cannot load dataset {source!r} (split {split!r}): {exc}. It is neither a "
                "local path nor a reachable hub dataset; with HF_HUB_OFFLINE=1 only datasets "
                "already in the local Hugging Face cache load.") from exc
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise TrainingDataError(f"{source}: missing column(s) {missing}; "
                                f"found {dataset.column_names}")
    return dataset


def _local_builder(path: Path) -> tuple[str, list[str], dict[str, Any]]:
    files = sorted(p for p in path.rglob("*") if p.suffix in LOCAL_FORMATS) \
        if path.is_dir() else [path]
    if not files:
        raise TrainingDataError(f"{path}: no {'/'.join(LOCAL_FORMATS)} files found")
    suffixes = {f.suffix for f in files}
    builders = {LOCAL_FORMATS.get(s) for s in suffixes}
    if None in builders or len(builders) != 1 or suffixes == {".csv", ".tsv"}:
        raise TrainingDataError(f"{path}: expected files of one format among "
                                f"{sorted(LOCAL_FORMATS)}, found {sorted(suffixes)}")
    extra = {"delimiter": "\t"} if suffixes == {".tsv"} else {}
    return builders.pop(), [str(f) for f in files], extra


def _read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _aligned_pairs(english: list[str], other: list[str], where: str) -> list[Row]:
    if len(english) != len(other):
        raise TrainingDataError(f"{where}: {len(other)} lines vs {len(english)} English lines")
    return [{"english": e, "non_english": o} for e, o in zip(english, other, strict=True)
            if e.strip() and o.strip()]


def tatoeba_languages(directory: str | Path) -> list[str]:
    """The language codes of a Tatoeba folder (``tatoeba.<xxx>-eng.<xxx>`` files)."""
    return sorted(p.name.split(".")[1].removesuffix("-eng")
                  for p in Path(directory).glob("tatoeba.*-eng.eng"))


def tatoeba_lines(directory: str | Path, lang: str) -> tuple[list[str], list[str]]:
    """The English lines and the aligned lines of ``lang`` in a Tatoeba folder."""
    base = Path(directory) / f"tatoeba.{lang}-eng"
    other = Path(f"{base}.{lang}")
    if not other.exists():
        raise TrainingDataError(f"{other}: no such Tatoeba file for language {lang!r}")
    english, translated = _read_lines(Path(f"{base}.eng")), _read_lines(other)
    if len(english) != len(translated):
        raise TrainingDataError(f"{other}: {len(translated)} lines vs {len(english)} English")
    return english, translated


def read_tatoeba(directory: str | Path, languages: Sequence[str] | None = None,
                 holdout: int = 0) -> list[Row]:
    """Parallel rows of the LASER Tatoeba test sets (line i aligned to line i), without
    the last ``holdout`` pairs of every language (kept for evaluation)."""
    rows: list[Row] = []
    for lang in languages or tatoeba_languages(directory):
        english, translated = tatoeba_lines(directory, lang)
        keep = max(len(english) - holdout, 0)
        rows += _aligned_pairs(english[:keep], translated[:keep], f"tatoeba/{lang}")
    return rows


def ntrex_languages(directory: str | Path) -> list[str]:
    """The translated languages of an NTREX-128 folder (``newstest2019-ref.<lang>.txt``)."""
    return sorted(p.name.removeprefix("newstest2019-ref.").removesuffix(".txt")
                  for p in Path(directory).glob("newstest2019-ref.*.txt"))


def ntrex_lines(directory: str | Path, lang: str) -> tuple[list[str], list[str]]:
    """The English lines and the aligned lines of ``lang``."""
    directory = Path(directory)
    other = directory / f"newstest2019-ref.{lang}.txt"
    if not other.exists():
        raise TrainingDataError(f"{other}: no such NTREX-128 file for language {lang!r}")
    english, translated = _read_lines(directory / NTREX_ENGLISH), _read_lines(other)
    if len(english) != len(translated):
        raise TrainingDataError(f"{other}: {len(translated)} lines vs {len(english)} English")
    return english, translated


def ntrex_heldout_mask(directory: str | Path, holdout_documents: int) -> list[bool]:
    """Per NTREX-128 line: whether it belongs to one of the first ``holdout_documents``
    articles (``DOCUMENT_IDS.tsv``). Whole articles are held out, so no sentence of a
    held-out article (nor its neighbours' context) is seen in training."""
    ids = _read_lines(Path(directory) / NTREX_DOCUMENT_IDS)
    heldout = set(list(dict.fromkeys(ids))[:holdout_documents])
    return [doc in heldout for doc in ids]


def read_ntrex(directory: str | Path, languages: Sequence[str] | None = None,
               holdout: int = 0, holdout_documents: int = 0) -> list[Row]:
    """Parallel rows of NTREX-128 without the last ``holdout`` lines of every language
    and without the lines of its first ``holdout_documents`` articles."""
    mask = ntrex_heldout_mask(directory, holdout_documents) if holdout_documents else None
    rows: list[Row] = []
    for lang in languages or ntrex_languages(directory):
        english, translated = ntrex_lines(directory, lang)
        keep = [i for i in range(len(english) - holdout) if not (mask and mask[i])]
        rows += _aligned_pairs([english[i] for i in keep], [translated[i] for i in keep],
                               f"ntrex128/{lang}")
    return rows


# gettext markup that is not text: mnemonics (``_Save``, ``~Save``, ``保存(_S)``), ellipses
# of menu items, and placeholders (``%1``, ``$(ARG1)``, ``%NUMBER``, ``<b>``, ``{0}``).
MNEMONIC = re.compile(r"\(_?[A-Za-z]\)|(?<!\w)[_~](?=\w)|…|\.\.\.$")
PLACEHOLDER = re.compile(r"[%$<>{}\\|#]|https?:")


def _clean_message(text: str) -> str:
    return " ".join(MNEMONIC.sub("", text).split())


def read_gettext(directory: str | Path, languages: Sequence[str], max_pairs: int = 0,
                 seed: int = 0) -> list[Row]:
    """Parallel rows from the gettext catalogues ``<directory>/<lang>/LC_MESSAGES/*.mo``
    (English ``msgid``, translated ``msgstr``), mnemonics removed, messages with
    placeholders or an untranslated text left out, each English message once per
    language; ``max_pairs`` (0: all) draws that many per language with ``seed``."""
    rows: list[Row] = []
    for lang in languages:
        files = sorted((Path(directory) / lang / "LC_MESSAGES").glob("*.mo"))
        if not files:
            raise TrainingDataError(f"{directory}/{lang}/LC_MESSAGES: no .mo catalogue")
        pairs: dict[str, str] = {}
        for file in files:
            with file.open("rb") as handle:
                # gettext offers no public way to list a catalogue's messages
                catalogue = gettext.GNUTranslations(handle)._catalog  # noqa: SLF001
            for key, translated in catalogue.items():
                english = _clean_message(key.split("\x04")[-1]) if isinstance(key, str) else ""
                other = _clean_message(translated) if isinstance(translated, str) else ""
                if english and other and other != english and not PLACEHOLDER.search(
                        english + other) and any(c.isalpha() for c in english):
                    pairs.setdefault(english, other)
        chosen = sorted(pairs)
        if max_pairs:
            chosen = sorted(random.Random(f"{seed}/{lang}").sample(chosen,
                                                                   min(max_pairs, len(chosen))))
        rows += [{"english": e, "non_english": pairs[e]} for e in chosen]
    return rows


def _cldr_names(locale: Any) -> dict[str, str]:
    """A locale's display names keyed by what they name."""
    names = {f"territory/{k}": v for k, v in locale.territories.items()}
    names |= {f"language/{k}": v for k, v in locale.languages.items()}
    names |= {f"currency/{k}": v for k, v in locale.currencies.items()}
    names |= {f"month/{k}": v for k, v in locale.months["format"]["wide"].items()}
    names |= {f"day/{k}": v for k, v in locale.days["format"]["wide"].items()}
    zones = locale.time_zones
    names |= {f"city/{zone}": zones[zone]["city"] for zone in zones if "city" in zones[zone]}
    return names


def read_cldr(languages: Sequence[str]) -> list[Row]:
    """Parallel rows of CLDR display names (``babel``): English name -> the name in each
    locale of ``languages`` (e.g. ``zh_Hans``), for territories, languages, currencies,
    months, days and time-zone cities (English cities without a CLDR name are spelled
    from the zone id: ``Europe/Moscow`` -> Moscow)."""
    try:
        from babel import Locale, UnknownLocaleError
    except ImportError as error:
        raise TrainingDataError("a cldr source needs the babel package "
                                "(pip install 'milco-os[train]')") from error
    english = _cldr_names(Locale.parse("en"))
    for zone in Locale.parse("zh").time_zones:  # every zone with a city in some locale
        english.setdefault(f"city/{zone}", zone.rsplit("/", 1)[-1].replace("_", " "))
    rows: list[Row] = []
    for lang in languages:
        try:
            names = _cldr_names(Locale.parse(lang))
        except (UnknownLocaleError, ValueError) as error:
            raise TrainingDataError(f"cldr source: unknown locale {lang!r}") from error
        rows += [{"english": english[key], "non_english": name} for key, name in names.items()
                 if key in english and name != english[key]]
    return rows


EMOJI_ANNOTATIONS = "annotations.json"


def _emoji_annotations(directory: Path, locale: str) -> dict[str, dict[str, list[str]]]:
    path = directory / locale / EMOJI_ANNOTATIONS
    if not path.is_file():
        raise TrainingDataError(f"{path}: no CLDR emoji annotations for locale {locale!r}")
    return json.loads(path.read_text(encoding="utf-8"))["annotations"]["annotations"]


def _emoji_texts(entry: dict[str, list[str]]) -> tuple[str, str]:
    """An annotation's name (its first ``tts``) and its keywords joined by commas."""
    return (entry.get("tts") or [""])[0], ", ".join(entry.get("default", []))


def read_emoji_annotations(directory: str | Path, languages: Sequence[str], max_pairs: int = 0,
                           seed: int = 0) -> list[Row]:
    """Parallel rows from CLDR's emoji annotations (the npm package
    ``cldr-annotations-full``: ``<directory>/<locale>/annotations.json``), paired across
    locales by their emoji: the English name with the locale's (``cat face`` ->
    ``kedi yüzü``), and the English keywords with the locale's, each list joined by commas
    (``animal, cat, face, kitten, kitty, pet`` -> ``ev hayvanı, hayvan, kedi, ...``): the
    everyday nouns and adjectives that sentences use and interface strings lack. A text
    equal to its English side is left out; ``max_pairs`` (0: all) draws that many per
    language with ``seed``."""
    directory = Path(directory)
    english = _emoji_annotations(directory, "en")
    rows: list[Row] = []
    for lang in languages:
        pairs = [{"english": e, "non_english": o}
                 for emoji, entry in _emoji_annotations(directory, lang).items()
                 for e, o in zip(_emoji_texts(english.get(emoji, {})), _emoji_texts(entry),
                                 strict=True) if e and o and o != e]
        if max_pairs and len(pairs) > max_pairs:
            pairs = random.Random(f"{seed}/{lang}").sample(pairs, max_pairs)
        rows += pairs
    return rows


# ---------------------------------------------------------------- bilingual dictionaries

# a gloss (or a sense of one) that is no translation: cross-references, surnames, variants,
# abbreviations, classifiers, grammar notes
DICTIONARY_SKIP = re.compile(
    r"\b(surname|variant|abbr|abbreviation|classifier|radical|used in|also written|"
    r"also pr|CL|sth|sb|etc|Taiwan pr|erhua|old name|transliteration)\b", re.IGNORECASE)
BRACKETS = re.compile(r"\([^()]*\)|\[[^\[\]]*\]|<[^<>]*>|\{[^{}]*\}")
GLOSS_PREFIX = re.compile(r"^(?:to|a|an|\(?bound form\)?)\s+", re.IGNORECASE)
# "Beijing municipality" -> Beijing (CC-CEDICT names its provinces and municipalities so)
ADMINISTRATIVE = re.compile(r"(?<=[a-z]) (?:municipality|province|prefecture|county)$")
ENGLISH_GLOSS = re.compile(r"[A-Za-z][A-Za-z'-]*(?: [A-Za-z][A-Za-z'-]*){0,2}")
HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
HEADWORD_SCRIPT = {"zh": re.compile(f"[{HAN}]+"),
                   "ja": re.compile(f"[{HAN}\u3005\u3040-\u309f\u30a0-\u30ff]+"),
                   "ko": re.compile("[\uac00-\ud7a3]+")}
FREEDICT_CODES = {"ar": "ara", "de": "deu", "es": "spa", "fr": "fra", "tr": "tur",
                  "ru": "rus", "hi": "hin", "fa": "fas", "vi": "vie", "th": "tha",
                  "ko": "kor", "ja": "jpn", "zh": "zho"}
JMDICT_SKIP_MISC = ("abbreviation", "archaism", "obsolete term", "obscure term", "rare term",
                    "vulgar expression", "derogatory", "slang")


def clean_gloss(gloss: str) -> str:
    """The English of one dictionary gloss, or ``""`` where it is no short translation:
    brackets, a leading ``to``/``a``/``an`` and anything after a comma or semicolon
    removed; cross-references, surnames, variants and abbreviations, glosses with digits
    or non-Latin text, and glosses of more than three words left out.

    >>> [clean_gloss(g) for g in ["to eat; to consume", "capital (city)", "surname Zhang",
    ...                           "variant of 吃[chi1]", "Beijing municipality, capital", "USA"]]
    ['eat', 'capital', '', '', 'Beijing', '']
    """
    text = gloss
    while BRACKETS.search(text):
        text = BRACKETS.sub(" ", text)
    text = " ".join(re.split(r"[,;:/]", text)[0].split())
    if DICTIONARY_SKIP.search(text):
        return ""
    text = ADMINISTRATIVE.sub("", GLOSS_PREFIX.sub("", text)).strip(" .!?-'")
    if not ENGLISH_GLOSS.fullmatch(text) or any(w.isupper() and len(w) > 1
                                                for w in text.split()):
        return ""
    return text


def _good_headword(word: str, language: str) -> bool:
    script = HEADWORD_SCRIPT.get(language.split("_")[0][:2])
    if script is not None:
        return bool(script.fullmatch(word))
    words = word.split()
    return 0 < len(words) <= 3 and all(c.isalpha() or c in "-'’" for c in "".join(words))


def _dictionary_rows(entries: Sequence[tuple[str, Sequence[str], float]], language: str,
                     max_pairs: int) -> list[Row]:
    """Rows of ``(headword, glosses in order, rank)`` entries: each headword once with its
    first clean gloss, by rank (lower first, then the entry order), at most ``max_pairs``."""
    best: dict[str, tuple[float, int, str]] = {}
    for order, (word, glosses, rank) in enumerate(entries):
        word = " ".join(word.split())
        if not _good_headword(word, language):
            continue
        english = next((e for e in map(clean_gloss, glosses) if e), "")
        if english and text_key(english) != text_key(word) and (
                word not in best or (rank, order) < best[word][:2]):
            best[word] = (rank, order, english)
    chosen = sorted(best.items(), key=lambda item: item[1][:2])
    return [{"english": english, "non_english": word}
            for word, (_, _, english) in chosen[:max_pairs or None]]


def _cedict_entries(path: Path) -> list[tuple[str, list[str], float]]:
    """CC-CEDICT lines ``traditional simplified [pinyin] /gloss/gloss/``, keyed by the
    simplified headword. CC-CEDICT has no frequencies: entries are ranked by how common
    their English is, counted as how often its rarest word occurs in all of the glosses
    (China, Beijing, capital and dog are frequent there), then by how many headwords use
    their rarest character."""
    lines = []
    text = path.read_text(encoding="utf-8")
    for line in text.splitlines():
        match = re.match(r"(\S+) (\S+) \[([^\]]*)\] /(.*)/\s*$", line)
        # a capitalised pinyin marks a name: kept (北京 [Bei3 jing1]) unless of a single
        # character, where it is a surname or a minority (张 [Zhang1] /surname Zhang/)
        if match and (len(match[2]) > 1 or not match[3][:1].isupper()):
            lines.append((match[2], match[4].split("/")))
    uses: dict[str, int] = {}
    for word, _ in lines:
        for char in set(word):
            uses[char] = uses.get(char, 0) + 1
    counts: dict[str, int] = {}
    for token in re.findall(r"[a-z]+", text.casefold()):
        counts[token] = counts.get(token, 0) + 1

    def rank(word: str, glosses: list[str]) -> float:
        english = next((e for e in map(clean_gloss, glosses) if e), "")
        common = min((counts.get(t, 0) for t in re.findall(r"[a-z]+", english.casefold())),
                     default=0)
        return -common - min(uses[c] for c in word) / 1e6
    return [(word, glosses, rank(word, glosses)) for word, glosses in lines]


def _jmdict_entries(path: Path) -> list[tuple[str, list[str], float]]:
    """JMdict entries of a jamdict SQLite database (the first kanji spelling, or the first
    kana one for words usually written in kana), ranked by their priority tags (``nf01``
    .. ``nf48`` word-frequency bands, then news1/ichi1/spec1/gai1, then the rest)."""
    def rank(tags: str | None) -> float:
        tags = (tags or "").split(",")
        bands = [int(t[2:]) for t in tags if t.startswith("nf") and t[2:].isdigit()]
        return min(bands) if bands else 49 if {"news1", "ichi1", "spec1", "gai1"} & set(
            tags) else 60 if any(tags) else 99
    import sqlite3
    uri = f"file:{path}?mode=ro"
    with sqlite3.connect(uri, uri=True) as db:
        spell: dict[int, tuple[str, float]] = {}
        for table, tags in (("Kana", "KNP"), ("Kanji", "KJP")):  # kanji replace kana
            for idseq, text, tagged in db.execute(
                    f"SELECT w.idseq, w.text, (SELECT group_concat(p.text) FROM {tags} p "
                    f"WHERE p.kid = w.ID) FROM {table} w ORDER BY w.ID DESC"):
                spell[idseq] = (text, rank(tagged))  # the first spelling wins
        kana = dict(db.execute("SELECT idseq, text FROM Kana ORDER BY ID DESC"))
        misc: dict[int, set[str]] = {}
        for sid, text in db.execute("SELECT sid, text FROM misc"):
            misc.setdefault(sid, set()).add(text)
        glosses: dict[int, list[str]] = {}
        usually_kana: set[int] = set()
        for idseq, sid, gloss in db.execute(
                "SELECT s.idseq, s.ID, g.text FROM Sense s JOIN SenseGloss g ON g.sid = s.ID "
                "WHERE g.lang = 'eng' ORDER BY s.ID, g.rowid"):
            notes = misc.get(sid, set())
            if "word usually written using kana alone" in notes and idseq not in glosses:
                usually_kana.add(idseq)
            if not notes & set(JMDICT_SKIP_MISC):
                glosses.setdefault(idseq, []).append(gloss)
    return [(kana[idseq] if idseq in usually_kana else spell[idseq][0], senses,
             spell[idseq][1]) for idseq, senses in glosses.items() if idseq in spell]


def _freedict_entries(path: Path) -> list[tuple[str, list[str], float]]:
    """dictd entries (``<name>.index`` of ``headword<TAB>offset<TAB>length`` in base64,
    ``<name>.dict.dz`` gzip-compressed text) as FreeDict writes them: the headword (and
    pronunciation) on the first line, then gloss lines (``1. dog``, ``dog <n>, hound``),
    notes, synonyms and examples. Ranked by how many senses the headword has (common
    words have many); of the first glosses of its senses the one most headwords share
    comes first. Ding's deu-eng still ranks poorly by this (``Hund`` -> mine car)."""
    def number(text: str) -> int:
        value = 0
        for char in text:
            value = value * 64 + DICTD_BASE64.index(char)
        return value
    dict_file = path.with_name(path.name.removesuffix(".index") + ".dict.dz")
    if not dict_file.exists():
        dict_file = dict_file.with_suffix("")
    opener = gzip.open if dict_file.suffix == ".dz" else open
    with opener(dict_file, "rb") as handle:
        data = handle.read()
    senses: dict[str, list[str]] = {}
    heads: dict[str, list[str]] = {}  # the first gloss of each sense
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) != 3 or parts[0].startswith("00database") or parts[0].startswith(
                "00-database"):
            continue
        start = number(parts[1])
        text = data[start:start + number(parts[2])].decode("utf-8", "replace")
        head, _, body = text.strip("\n").partition("\n")
        word = re.sub(r"\s/[^/]*/.*$|\s<[^>]*>\s*$", "", head).strip()
        for gloss_line in body.splitlines():
            stripped = gloss_line.strip()
            if not stripped or stripped[0] in "\"<" or re.match(
                    r"(Synonyms?|Antonyms?|see|Note|Notes?)\b", stripped):
                continue
            stripped = re.sub(r"^\d+\.\s*", "", stripped)
            if not stripped.startswith("["):  # a domain label marks a special sense
                glosses = [g for g in re.split(r",\s*", re.sub(r"<[^>]*>", "", stripped))
                           if "[" not in g]
                heads.setdefault(word, []).extend(glosses[:1])
                senses.setdefault(word, []).extend(glosses)
    shared: dict[str, int] = {}
    for glosses in senses.values():
        for english in {clean_gloss(g) for g in glosses} - {""}:
            shared[english] = shared.get(english, 0) + 1
    return [(word, sorted(heads[word], key=lambda g: -shared.get(clean_gloss(g), 0))
             + glosses, -len(glosses)) for word, glosses in senses.items()]


DICTIONARY_MAX_PAIRS = 5000  # per language, the default of a ``kind: dictionary`` source
DICTD_BASE64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def dictionary_file(path: str | Path, language: str) -> Path:
    """The dictionary of ``language`` in a folder: ``cc-cedict.txt`` (zh),
    ``jmdict.db`` (ja) or ``freedict-<xxx>-eng.index``; a file path is returned as is."""
    path = Path(path)
    if path.is_file():
        return path
    lang = language.split("_")[0].split("-")[0]
    names = {"zh": ["cc-cedict.txt"], "ja": ["jmdict.db"]}.get(lang, [])
    names.append(f"freedict-{FREEDICT_CODES.get(lang, lang)}-eng.index")
    for name in names:
        if (path / name).exists():
            return path / name
    raise TrainingDataError(f"{path}: no dictionary for language {language!r} "
                            f"(looked for {', '.join(names)})")


def read_dictionary(path: str | Path, language: str, max_pairs: int = 0) -> list[Row]:
    """Word-level parallel rows (English gloss -> headword) of one bilingual dictionary:
    CC-CEDICT text (``*.txt``, simplified headwords), a jamdict JMdict SQLite database
    (``*.db``) or a FreeDict dictd ``*.index`` (beside its ``.dict.dz``). Each headword
    once, with its first gloss that :func:`clean_gloss` keeps (1-3 English words); CJK
    headwords only of Han/kana/hangul, others only of letters; common words first
    (see each format's ranking), ``max_pairs`` of them (0: all)."""
    path = Path(path)
    if not path.exists():
        raise TrainingDataError(f"{path}: no such dictionary")
    if path.suffix == ".index":
        entries = _freedict_entries(path)
    elif path.suffix in (".db", ".sqlite"):
        entries = _jmdict_entries(path)
    else:
        entries = _cedict_entries(path)
    return _dictionary_rows(entries, language, max_pairs)


def load_parallel_source(spec: dict[str, Any]) -> Sequence[Row]:
    """One parallel source of a config:
    ``{kind: tatoeba|ntrex|gettext|cldr|emoji|dictionary|rows, path: ..., ...}``."""
    kind, path, languages = spec.get("kind", "rows"), spec.get("path"), spec.get("languages")
    if kind == "cldr":
        return read_cldr(languages or [])
    if not path:
        raise TrainingDataError(f"parallel source {spec}: field 'path' is required")
    path = os.path.expanduser(path)
    if kind == "tatoeba":
        return read_tatoeba(path, languages, holdout=int(spec.get("holdout", 0)))
    if kind == "ntrex":
        return read_ntrex(path, languages, holdout=int(spec.get("holdout", 0)),
                          holdout_documents=int(spec.get("holdout_documents", 0)))
    if kind == "gettext":
        return read_gettext(path, languages or [], int(spec.get("max_pairs", 0)),
                            int(spec.get("seed", 0)))
    if kind == "emoji":
        return read_emoji_annotations(path, languages or [], int(spec.get("max_pairs", 0)),
                                      int(spec.get("seed", 0)))
    if kind == "dictionary":
        max_pairs = int(spec.get("max_pairs", DICTIONARY_MAX_PAIRS))
        if not languages:
            raise TrainingDataError(f"parallel source {spec}: field 'languages' is required")
        return [row for lang in languages
                for row in read_dictionary(dictionary_file(path, lang), lang, max_pairs)]
    if kind == "rows":
        return load_rows(path, PARALLEL_COLUMNS, split=spec.get("split", "train"))
    raise TrainingDataError(f"parallel source {spec}: unknown kind {kind!r} "
                            "(tatoeba, ntrex, gettext, cldr, emoji, dictionary or rows)")


def iter_rows(dataset: Sequence[Any]) -> Iterator[Row]:
    """Rows of a (concatenated) dataset, reading columns at once where the source allows."""
    parts = dataset.datasets if isinstance(dataset, torch.utils.data.ConcatDataset) else [dataset]
    for part in parts:
        if hasattr(part, "column_names"):
            yield from ({"english": e, "non_english": n}
                        for e, n in zip(part["english"], part["non_english"], strict=True))
        else:
            yield from part


def text_key(text: str) -> str:
    """What makes two texts the same: Unicode NFKC, whitespace folded, case folded."""
    return " ".join(unicodedata.normalize("NFKC", text).split()).casefold()


def heldout_texts(specs: Sequence[dict[str, Any]]) -> set[str]:
    """The :func:`text_key` of every text the Tatoeba and NTREX-128 sources hold out
    (both sides of each held-out pair)."""
    held: set[str] = set()
    for spec in specs:
        path, kind = os.path.expanduser(spec.get("path") or ""), spec.get("kind")
        if kind == "tatoeba" and spec.get("holdout"):
            for lang in spec.get("languages") or tatoeba_languages(path):
                for side in tatoeba_lines(path, lang):
                    held |= {text_key(t) for t in side[-int(spec["holdout"]):]}
        if kind == "ntrex" and (spec.get("holdout_documents") or spec.get("holdout")):
            mask = ntrex_heldout_mask(path, int(spec.get("holdout_documents", 0)))
            tail = len(mask) - int(spec.get("holdout", 0))
            for lang in spec.get("languages") or ntrex_languages(path):
                for side in ntrex_lines(path, lang):
                    held |= {text_key(t) for i, t in enumerate(side) if mask[i] or i >= tail}
    return held


def load_parallel_sources(specs: Sequence[dict[str, Any]], held: set[str] | None = None
                          ) -> tuple[list[Row], int]:
    """Every source's rows, without the rows whose English or non-English text is held out
    by one of the sources (so a text held out for evaluation never enters training through
    another source); and how many rows that left out. ``held``: the held-out texts
    (:func:`heldout_texts`) when ``specs`` are some of the sources and the rest hold out
    text too."""
    held = heldout_texts(specs) if held is None else held
    rows = [row for spec in specs for row in iter_rows(load_parallel_source(spec))]
    kept = [row for row in rows if text_key(row["english"]) not in held
            and text_key(row["non_english"]) not in held]
    return kept, len(rows) - len(kept)


# ---------------------------------------------------------------- distillation groups


def check_distillation_row(row: Row, index: int) -> None:
    """Raise :class:`TrainingDataError` naming record ``index`` and the bad field."""
    for column in DISTILLATION_COLUMNS:
        if column not in row or row[column] is None:
            raise TrainingDataError(f"distillation record {index}: field {column!r} is missing")
    if not isinstance(row["query"], str) or not row["query"].strip():
        raise TrainingDataError(f"distillation record {index}: field 'query' must be text")
    for docs, scores in (("pos", "pos_scores"), ("neg", "neg_scores")):
        if len(row[docs]) != len(row[scores]):
            raise TrainingDataError(f"distillation record {index}: field {scores!r} has "
                                    f"{len(row[scores])} scores for {len(row[docs])} {docs!r}")
    if not row["pos"]:
        raise TrainingDataError(f"distillation record {index}: field 'pos' is empty")


@dataclass(frozen=True)
class Group:
    """A query with its positive first, then its negatives, and their teacher scores."""

    query: str
    docs: list[str]
    teacher_scores: list[float]


def sample_group(row: Row, index: int, group_size: int, rng: random.Random) -> Group:
    """1 sampled positive + (group_size - 1) sampled negatives of distillation row ``index``.

    Negatives are drawn without replacement when there are enough, else with it.
    """
    check_distillation_row(row, index)
    n_neg = group_size - 1
    if n_neg and not row["neg"]:
        raise TrainingDataError(f"distillation record {index}: field 'neg' is empty but the "
                                f"group size is {group_size}")
    p = rng.randrange(len(row["pos"]))
    negs = (rng.sample(range(len(row["neg"])), n_neg) if len(row["neg"]) >= n_neg
            else [rng.randrange(len(row["neg"])) for _ in range(n_neg)])
    docs = [row["pos"][p]] + [row["neg"][i] for i in negs]
    scores = [row["pos_scores"][p]] + [row["neg_scores"][i] for i in negs]
    return Group(row["query"], [str(d) for d in docs], [float(s) for s in scores])


class DistillationGroups(torch.utils.data.Dataset):
    """Distillation rows as groups, resampled per epoch yet reproducible (seed, epoch, index)."""

    def __init__(self, rows: Sequence[Row], group_size: int = 8, seed: int = 42) -> None:
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        self.rows, self.group_size, self.seed, self.epoch = rows, group_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Group:
        rng = random.Random(f"{self.seed}/{self.epoch}/{index}")
        return sample_group(self.rows[index], index, self.group_size, rng)


# ---------------------------------------------------------------- batching


class LengthGroupedBatches:
    """Shuffled batches of similar lengths, the same for a given (seed, epoch).

    Indices are shuffled, cut into mega-batches of ``batch_size * mega_factor``, sorted
    by length inside each mega-batch (so padding is small) and cut into batches, whose
    order is shuffled again. Resuming skips a number of batches of the same list.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int,
                 mega_factor: int = 50) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.lengths, self.batch_size, self.seed = list(lengths), batch_size, seed
        self.mega = batch_size * mega_factor

    def epoch(self, epoch: int) -> list[list[int]]:
        rng = random.Random(f"{self.seed}/batches/{epoch}")
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        batches = []
        for start in range(0, len(order), self.mega):
            mega = sorted(order[start:start + self.mega], key=lambda i: -self.lengths[i])
            batches += [mega[b:b + self.batch_size] for b in range(0, len(mega), self.batch_size)]
        rng.shuffle(batches)
        return batches


# ---------------------------------------------------------------- collators


def tokenize(tokenizer: Any, texts: list[str], max_length: int,
             pad_to_multiple_of: int | None = None) -> dict[str, Tensor]:
    """``input_ids`` and ``attention_mask``, padded to the longest text of the batch."""
    encoded = tokenizer(texts, padding=True, truncation=True, max_length=max_length,
                        pad_to_multiple_of=pad_to_multiple_of, return_tensors="pt")
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


@dataclass
class ParallelCollator:
    """Alignment batches: non-English and English through the student's tokenizer and
    English through the teacher's, each padded to its own longest text."""

    student_tokenizer: Any
    teacher_tokenizer: Any
    max_length: int = 256
    pad_to_multiple_of: int | None = None

    def __call__(self, rows: list[Row]) -> dict[str, dict[str, Tensor]]:
        for i, row in enumerate(rows):
            for column in PARALLEL_COLUMNS:
                if not isinstance(row.get(column), str):
                    raise TrainingDataError(f"parallel record {i} of the batch: field "
                                            f"{column!r} must be text, got {row.get(column)!r}")
        english = [r["english"] for r in rows]
        args = (self.max_length, self.pad_to_multiple_of)
        return {
            "non_english": tokenize(self.student_tokenizer, [r["non_english"] for r in rows],
                                    *args),
            "english": tokenize(self.student_tokenizer, english, *args),
            "teacher_english": tokenize(self.teacher_tokenizer, english, *args),
        }


@dataclass
class GroupCollator:
    """Contrastive batches: B queries, B * G documents (group by group, positive first)
    and the teacher scores [B, G]."""

    tokenizer: Any
    query_max_length: int = 64
    doc_max_length: int = 256
    pad_to_multiple_of: int | None = None

    def __call__(self, groups: list[Group]) -> dict[str, Any]:
        sizes = {len(g.docs) for g in groups}
        if len(sizes) != 1:
            raise TrainingDataError(f"groups of different sizes in one batch: {sorted(sizes)}")
        return {
            "queries": tokenize(self.tokenizer, [g.query for g in groups],
                                self.query_max_length, self.pad_to_multiple_of),
            "docs": tokenize(self.tokenizer, [d for g in groups for d in g.docs],
                             self.doc_max_length, self.pad_to_multiple_of),
            "teacher_scores": torch.tensor([g.teacher_scores for g in groups]),
        }
