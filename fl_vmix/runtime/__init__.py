"""Running experiments: the ``python -m fl_vmix`` command, the ``flwr run`` launcher, the Flower app
folder it launches, SuperLink connections, and the management of the processes Flower starts."""
