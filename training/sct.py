"""Stage 2, Sparse Contrastive Training.

Examples::

    python training/sct.py --config training/configs/tiny-sct.yaml max_steps=30
    deepspeed training/sct.py --config training/configs/milco-650m-sct.yaml \\
        --deepspeed training/ds/zero2.json
"""

from run import main

if __name__ == "__main__":
    main("sct")
