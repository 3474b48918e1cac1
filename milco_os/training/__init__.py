"""Training MILCO: Sparse Alignment Pretraining (stage 1) and Sparse Contrastive Training (stage 2).

- :mod:`milco_os.training.losses`: SMSE, KL distillation, InfoNCE, sparsity regularisers, scores;
- :mod:`milco_os.training.data`: parallel corpora, distillation groups, collators, samplers;
- :mod:`milco_os.training.config`: YAML configs with ``key=value`` overrides;
- :mod:`milco_os.training.trainer`: the loop (single process, torchrun/DDP or DeepSpeed ZeRO);
- :mod:`milco_os.training.stages`: the two stages' models and loss steps;
- :mod:`milco_os.training.echo_llm`: stage 2 with an echo-LLM student;
- :mod:`milco_os.training.build`: the stage a config names.

The runnable scripts live in the repository's ``training/`` folder.
"""
