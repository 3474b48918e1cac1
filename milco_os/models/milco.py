"""The MILCO model as a PyTorch module, in the released layout.

MILCO = a multilingual encoder (XLM-R architecture) whose states H feed

- the *pivot* view: ``MLMHead(GELU(Linear(H)))`` over the English word-piece vocabulary,
  masked-max-pooled over positions, then ``log1p(relu(.))``;
- the *echo* (source) view: ``relu(EchoLinear(H)) * mask * scale`` per position.

State-dict keys are exactly those of the released checkpoints (``m_model.*``,
``projector.*``, ``mlm_head.predictions.*``, ``echo.*``, ``scale``), so a released
``pytorch_model.bin`` loads without running remote code. Every part is built from
``config.json`` alone; the weights are read once.

>>> import tempfile
>>> from milco_os.models.presets import init_model
>>> folder = init_model("tiny", tempfile.mkdtemp())
>>> model = MilcoModel.from_pretrained(folder)
>>> out = model(torch.tensor([[0, 5, 6, 2]]), torch.ones(1, 4, dtype=torch.long))
>>> out.pivot.shape[1] == model.config.en_vocab_size
True
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, BertConfig, PretrainedConfig, XLMRobertaConfig, XLMRobertaModel
from transformers.models.bert.modeling_bert import BertForMaskedLM, BertOnlyMLMHead

from milco_os.models.base import (
    CheckpointError,
    SparseModel,
    load_english_head,
    tie_decoder_bias,
)
from milco_os.models.files import (
    EN_TOKENIZER_DIR,
    PICKLE_NAME,
    SAFETENSORS_NAME,
    config_fields,
    copy_tokenizers,
    read_state_dict,
    resolve_model_dir,
    save_safetensors,
)

logger = logging.getLogger(__name__)

# Keys of the English teacher kept in alignment checkpoints; not needed for inference.
TEACHER_PREFIX = "en_lsr."
DECODER_BIAS = "mlm_head.predictions.decoder.bias"
HEAD_BIAS = "mlm_head.predictions.bias"

# The paper's shapes (XLM-R-large / BGE-M3 encoder, BERT-base SPLADE head), used when
# a config.json carries no nested backbone configs (as the released one does not).
PAPER_ENCODER = {
    "vocab_size": 250002,
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
    "max_position_embeddings": 8194,
    "type_vocab_size": 1,
    "layer_norm_eps": 1e-5,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
}
PAPER_HEAD = {"vocab_size": 30522, "hidden_size": 768, "hidden_act": "gelu",
              "layer_norm_eps": 1e-12}


class MilcoConfig(PretrainedConfig):
    """Configuration of a MILCO model (``model_type="milco"``).

    ``m_encoder_config`` (an ``XLMRobertaConfig`` dict) and ``en_head_config`` (a
    ``BertConfig`` dict) make the model buildable offline from this config alone.
    When absent (released config.json), :meth:`MilcoModel.from_pretrained` infers
    them from the checkpoint's tensor shapes, else the paper's shapes are used.
    """

    model_type = "milco"

    multilingual_encoder_checkpoint: str | None = None
    lsr_encoder_checkpoint: str | None = None
    en_vocab_size: int = 30522
    m_vocab_size: int = 250002
    en_hidden_size: int = 768
    m_hidden_size: int = 1024
    echo: bool = True
    lambda_q: float = 1e-3
    lambda_d: float = 1e-5
    sparse_reg: str = "l1"
    m_encoder_config: dict | None = None
    en_head_config: dict | None = None
    # Source-vocabulary ids whose positions echo nothing (special tokens, the bare "▁",
    # punctuation-only pieces): set by milco-os training; absent from released checkpoints.
    echo_ignored_ids: list[int] | None = None

    def encoder_config(self) -> XLMRobertaConfig:
        fields = dict(self.m_encoder_config or {
            **PAPER_ENCODER, "vocab_size": self.m_vocab_size, "hidden_size": self.m_hidden_size,
            "num_attention_heads": max(1, self.m_hidden_size // 64),
            "intermediate_size": 4 * self.m_hidden_size,
        })
        return XLMRobertaConfig(**config_fields(fields))

    def head_config(self) -> BertConfig:
        fields = dict(self.en_head_config or {
            **PAPER_HEAD, "vocab_size": self.en_vocab_size, "hidden_size": self.en_hidden_size,
        })
        return BertConfig(**config_fields(fields))



# Registered so transformers' Auto* loaders (AutoTokenizer in the training collators) read
# a MILCO folder's config.json as what it is.
AutoConfig.register(MilcoConfig.model_type, MilcoConfig, exist_ok=True)


class MilcoModel(SparseModel):
    """MILCO: multilingual encoder + connector + English MLM head (+ LexEcho head)."""

    def __init__(self, config: MilcoConfig) -> None:
        super().__init__()
        self.config = config
        encoder_config, head_config = config.encoder_config(), config.head_config()
        _check_sizes(config, encoder_config, head_config)
        self.m_model = XLMRobertaModel(encoder_config, add_pooling_layer=True)
        self.projector = nn.Linear(encoder_config.hidden_size, head_config.hidden_size)
        self.mlm_head = BertOnlyMLMHead(head_config)
        tie_decoder_bias(self.mlm_head)
        if config.echo:
            self.echo = nn.Linear(encoder_config.hidden_size, 1)
            self.scale = nn.Parameter(torch.ones(1))
        else:
            self.echo = None
            self.scale = None
        # Where this model's tokenizers come from (a folder each); set by the loaders.
        self.tokenizer_dirs: dict[str, Path] = {}

    # ----- what the model is -----
    @property
    def pivot_vocab_size(self) -> int:
        return self.config.en_vocab_size

    @property
    def echo_vocab_size(self) -> int:
        return self.config.m_vocab_size

    @property
    def max_input_positions(self) -> int:
        """XLM-R position embeddings reserve ``pad + 1`` positions."""
        encoder = self.m_model.config
        return encoder.max_position_embeddings - (encoder.pad_token_id + 1)

    @property
    def has_echo(self) -> bool:
        return self.echo is not None

    def echo_scale(self) -> float | None:
        return None if self.scale is None else float(self.scale.detach().float().reshape(-1)[0])

    def echo_parameters(self) -> list[nn.Parameter]:
        return [] if self.echo is None else [*self.echo.parameters(), self.scale]

    # ----- the math -----
    def encode_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Last hidden state H of the multilingual encoder, [B, L, Hm]."""
        return self.m_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def pivot_head(self, hidden: torch.Tensor) -> torch.Tensor:
        """English vocabulary logits per position: ``MLMHead(GELU(Linear(H)))``."""
        return self.mlm_head(nn.functional.gelu(self.projector(hidden)))

    def echo_from_states(self, hidden: torch.Tensor,
                         attention_mask: torch.Tensor) -> torch.Tensor | None:
        """Echo weights per position, [B, L]: ``relu(EchoLinear(H)) * mask * scale``."""
        if self.echo is None:
            return None
        weights = torch.relu(self.echo(hidden).squeeze(-1))
        return weights * attention_mask.to(weights.dtype) * self.scale

    # ----- building -----
    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str | torch.device | None = None,
                        dtype: torch.dtype | None = None) -> MilcoModel:
        """Load a MILCO folder (config.json + model.safetensors or pytorch_model.bin).

        Sub-modules are built on the ``meta`` device from the config and the state dict
        is assigned once, so nothing is downloaded or randomly initialised.
        """
        folder = resolve_model_dir(path)
        config = MilcoConfig.from_pretrained(folder)
        state = read_state_dict(folder)
        _fill_shapes_from_state(config, state)
        with torch.device("meta"):
            model = cls(config)
        model.load_released_state(state)
        model.tokenizer_dirs = tokenizer_dirs_for(folder, config)
        model.eval()
        return model.to(device=device, dtype=dtype)

    @classmethod
    def from_backbones(cls, encoder_path: str | Path, splade_path: str | Path,
                       echo: bool = True, encoder_layers: int | None = None) -> MilcoModel:
        """A fresh MILCO from an XLM-R-type encoder folder and a BertForMaskedLM SPLADE folder.

        The connector (and echo head, scale 1) are freshly initialised; the English head
        is a copy of the SPLADE MLM head with its decoder untied from the embeddings.
        ``encoder_layers`` keeps only the encoder's first layers (its last hidden state is
        then that layer's output).
        """
        encoder = XLMRobertaModel.from_pretrained(str(encoder_path), add_pooling_layer=True)
        if encoder_layers is not None:
            if not 1 <= encoder_layers <= encoder.config.num_hidden_layers:
                raise ValueError(f"encoder_layers must be in 1..{encoder.config.num_hidden_layers}"
                                 f", got {encoder_layers}")
            encoder.encoder.layer = encoder.encoder.layer[:encoder_layers]
            encoder.config.num_hidden_layers = encoder_layers
        splade = BertForMaskedLM.from_pretrained(str(splade_path))
        enc_cfg, head_cfg = encoder.config, splade.config
        config = MilcoConfig(
            multilingual_encoder_checkpoint=str(encoder_path),
            lsr_encoder_checkpoint=str(splade_path),
            en_vocab_size=head_cfg.vocab_size, m_vocab_size=enc_cfg.vocab_size,
            en_hidden_size=head_cfg.hidden_size, m_hidden_size=enc_cfg.hidden_size, echo=echo,
            m_encoder_config=config_fields(enc_cfg.to_dict()),
            en_head_config=config_fields(head_cfg.to_dict()),
        )
        model = cls(config)
        model.m_model.load_state_dict(encoder.state_dict())
        load_english_head(model.mlm_head, splade.cls)
        model.tokenizer_dirs = {"m": Path(encoder_path), "en": Path(splade_path)}
        return model

    def load_released_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Assign a released-layout state dict; missing/unexpected keys raise naming them."""
        state = _normalise_state(state)
        expected = set(self.state_dict())
        missing = sorted(expected - state.keys())
        unexpected = sorted(state.keys() - expected)
        if missing or unexpected:
            raise CheckpointError(
                f"checkpoint does not match the MILCO config: missing keys {missing[:20]}"
                f"{' ...' if len(missing) > 20 else ''}; unexpected keys {unexpected[:20]}"
                f"{' ...' if len(unexpected) > 20 else ''}"
            )
        corrupt = [key for key, value in state.items()
                   if value.is_floating_point() and not torch.isfinite(value).all()]
        if corrupt:  # NaN/inf weights would turn every vector into NaN (or silently empty)
            raise CheckpointError(f"checkpoint has NaN or infinite values in {corrupt[:20]}")
        try:
            self.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as exc:  # shape mismatches
            raise CheckpointError(f"checkpoint does not match the MILCO config: {exc}") from None
        tie_decoder_bias(self.mlm_head)
        _materialise_position_buffers(self.m_model)
        self.check_scale()

    def check_scale(self) -> None:
        """Warn when ``scale <= 0``: every echo weight would then be dropped."""
        scale = self.echo_scale()
        if scale is not None and scale <= 0:
            warnings.warn(
                f"MILCO checkpoint has echo scale {scale:.4g} <= 0: "
                "the source (echo) view will be empty",
                stacklevel=3,
            )

    # ----- saving -----
    def save_pretrained(self, out_dir: str | Path, safe_serialization: bool = True,
                        pickle: bool = False) -> Path:
        """Write config.json, weights and tokenizers in the released layout.

        ``safe_serialization`` writes model.safetensors; ``pickle`` (or
        ``safe_serialization=False``) also writes pytorch_model.bin as the release does.
        Both ``decoder.bias`` and ``predictions.bias`` are written, with equal values.
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.config.architectures = ["MilcoModel"]
        self.config.save_pretrained(out)
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        if safe_serialization:
            save_safetensors(state, out / SAFETENSORS_NAME)
        if pickle or not safe_serialization:
            torch.save(state, out / PICKLE_NAME)
        copy_tokenizers(self.tokenizer_dirs, out)
        return out

    def num_parameters_by_part(self) -> dict[str, int]:
        """Parameter counts of the encoder, connector, English head and echo head."""
        parts = {"m_model": self.m_model, "projector": self.projector, "mlm_head": self.mlm_head}
        counts = {name: sum(p.numel() for p in part.parameters()) for name, part in parts.items()}
        if self.echo is not None:
            counts["echo"] = sum(p.numel() for p in self.echo.parameters()) + 1
        return counts


def _normalise_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop teacher keys and old buffers; make both spellings of the head bias present."""
    teacher = [k for k in state if k.startswith(TEACHER_PREFIX)]
    if teacher:
        logger.info("ignoring %d English-teacher keys (%s*): not used for inference",
                    len(teacher), TEACHER_PREFIX)
    buffers = ("m_model.embeddings.position_ids", "m_model.embeddings.token_type_ids")
    out = {k: v for k, v in state.items() if not k.startswith(TEACHER_PREFIX) and k not in buffers}
    if DECODER_BIAS in out and HEAD_BIAS in out:
        if not torch.equal(out[DECODER_BIAS], out[HEAD_BIAS]):
            raise CheckpointError(f"{DECODER_BIAS} and {HEAD_BIAS} differ; they must be shared")
    elif DECODER_BIAS in out or HEAD_BIAS in out:
        bias = out.get(DECODER_BIAS, out.get(HEAD_BIAS))
        out[DECODER_BIAS] = out[HEAD_BIAS] = bias
    return out


def _fill_shapes_from_state(config: MilcoConfig, state: Mapping[str, torch.Tensor]) -> None:
    """Infer nested backbone configs from tensor shapes when config.json lacks them."""
    if config.m_encoder_config is None and "m_model.embeddings.word_embeddings.weight" in state:
        vocab, hidden = state["m_model.embeddings.word_embeddings.weight"].shape
        layers = {k.split(".")[3] for k in state if k.startswith("m_model.encoder.layer.")}
        config.m_encoder_config = {
            **PAPER_ENCODER, "vocab_size": vocab, "hidden_size": hidden,
            "num_hidden_layers": len(layers), "num_attention_heads": max(1, hidden // 64),
            "intermediate_size": _shape(state, "m_model.encoder.layer.0.intermediate.dense.weight",
                                        0, 4 * hidden),
            "max_position_embeddings": _shape(
                state, "m_model.embeddings.position_embeddings.weight", 0, 514),
            "type_vocab_size": _shape(state, "m_model.embeddings.token_type_embeddings.weight",
                                      0, 1),
        }
        logger.warning("config.json has no m_encoder_config; shapes inferred from the "
                       "checkpoint, assuming attention heads of size 64: %s",
                       config.m_encoder_config)
    if config.en_head_config is None and "mlm_head.predictions.decoder.weight" in state:
        vocab, hidden = state["mlm_head.predictions.decoder.weight"].shape
        config.en_head_config = {**PAPER_HEAD, "vocab_size": vocab, "hidden_size": hidden}


def _shape(state: Mapping[str, torch.Tensor], key: str, dim: int, default: int) -> int:
    return int(state[key].shape[dim]) if key in state else default


def _check_sizes(config: MilcoConfig, encoder: XLMRobertaConfig, head: BertConfig) -> None:
    pairs = {"m_vocab_size": (config.m_vocab_size, encoder.vocab_size),
             "m_hidden_size": (config.m_hidden_size, encoder.hidden_size),
             "en_vocab_size": (config.en_vocab_size, head.vocab_size),
             "en_hidden_size": (config.en_hidden_size, head.hidden_size)}
    wrong = {k: v for k, v in pairs.items() if v[0] != v[1]}
    if wrong:
        raise CheckpointError(f"MILCO config sizes disagree with the backbone configs: {wrong}")


def _materialise_position_buffers(encoder: XLMRobertaModel) -> None:
    """Create the non-persistent position/token-type buffers left on ``meta`` by loading."""
    embeddings = encoder.embeddings
    positions = encoder.config.max_position_embeddings
    for name, value in (
        ("position_ids", torch.arange(positions).expand((1, -1))),
        ("token_type_ids", torch.zeros((1, positions), dtype=torch.long)),
    ):
        if getattr(embeddings, name, None) is not None:
            embeddings.register_buffer(name, value, persistent=False)
    left = [n for n, t in _tensors(encoder) if t.is_meta]
    if left:
        raise CheckpointError(f"tensors left uninitialised after loading: {left}")


def _tensors(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    yield from module.named_parameters()
    yield from module.named_buffers()


def tokenizer_dirs_for(folder: Path, config: MilcoConfig) -> dict[str, Path]:
    """Tokenizer folders of a MILCO: in the model folder, else the backbone checkpoints."""
    dirs: dict[str, Path] = {}
    for role, local, backbone in (
        ("m", folder, config.multilingual_encoder_checkpoint),
        ("en", folder / EN_TOKENIZER_DIR, config.lsr_encoder_checkpoint),
    ):
        if (local / "tokenizer.json").is_file():
            dirs[role] = local
        elif backbone:
            dirs[role] = Path(backbone)  # resolved (maybe downloaded) when first needed
    return dirs
