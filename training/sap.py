"""Stage 1, Sparse Alignment Pretraining.

Examples::

    python training/sap.py --config training/configs/tiny.yaml max_steps=30
    torchrun --nproc_per_node 8 training/sap.py --config training/configs/milco-650m-sap.yaml
    deepspeed training/sap.py --config training/configs/milco-650m-sap.yaml \\
        --deepspeed training/ds/zero2.json
"""

from run import main

if __name__ == "__main__":
    main("sap")
