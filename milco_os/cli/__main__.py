"""``python -m milco_os.cli`` runs the ``milco-os`` command."""

from milco_os.cli import main

if __name__ == "__main__":
    main()
