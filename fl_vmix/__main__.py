"""`python -m fl_vmix`: run the Hydra-configured federated experiment."""

from fl_vmix.runtime.cli import main

if __name__ == "__main__":
    main()
