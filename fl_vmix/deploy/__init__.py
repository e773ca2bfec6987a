"""Run fl_vmix on Flower's Deployment Engine: one SuperLink, one SuperNode per data owner.

* ``export``: each client's partition and VisualMixer key in its own folder (``python -m fl_vmix.deploy export``).
* ``tls``: a private CA and the SuperLink's certificate; checks for expired / mismatched ones.
* ``auth``: SuperNode authentication key pairs (ECDSA P-384, OpenSSH format) for ``--enable-supernode-auth``.
* ``connection``: the ``flwr`` CLI's ``[superlink.<name>]`` entry and a fail-fast probe of the SuperLink.
* ``preflight``: checks a SuperNode host runs before ``flower-supernode`` (data folder, key, auth key, CA).
* ``local``: a loopback federation (processes started by ``scripts/deploy/*.sh``, stopped by PID) for
  tests and benchmarks.

The process-level commands live in ``scripts/deploy/`` (bash, for real separate hosts).
"""
