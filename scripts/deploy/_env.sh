# Sourced by the scripts in scripts/deploy/: environment shared by every Flower process of fl_vmix.
# PYTHON: the interpreter of the environment where fl_vmix is installed (pip install -e . in a checkout);
# flower-superlink / flower-supernode / flwr are taken from the same environment's bin folder.
PYTHON=${PYTHON:-python}
PYTHON_BIN_DIR=$(dirname "$(command -v "$PYTHON")")
export PATH="$PYTHON_BIN_DIR:$PATH"
export FLWR_TELEMETRY_ENABLED=${FLWR_TELEMETRY_ENABLED:-0}
export FLWR_DISABLE_UPDATE_CHECK=${FLWR_DISABLE_UPDATE_CHECK:-1}
# The app's dependencies are installed with fl_vmix on every host; without this flwr re-installs them
# from the network (uv) for every run.
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=${FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION:-1}
export HF_DATASETS_OFFLINE=${HF_DATASETS_OFFLINE:-1} HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}

die() { echo "$(basename "$0"): $*" >&2; exit 2; }
