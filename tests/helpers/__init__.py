"""Test helpers shared by the test suites and the benchmarks.

* :mod:`trees`     - fixture trees with every entry type, and large benchmark trees
* :mod:`snapshot`  - a metadata/content snapshot of a tree, and a tree comparison
* :mod:`erofs`     - loop devices, kernel EROFS mounts, ``fsck.erofs``
* :mod:`layers`    - OCI layer tars and the overlayfs reference view of a layer stack
* :mod:`proc`      - running a command and measuring the child's peak RSS
* :mod:`env`       - skipping when a tool or kernel filesystem is missing

None of these imports the ``nydus`` package: they are oracles and fixtures, not code
under test.
"""
