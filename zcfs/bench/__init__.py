"""`zcfs bench`: zcfs beside direct access and other FUSE filesystems, on this machine.

command.py   the command line: suites, configurations, output
workloads.py the data sets and workloads
configs.py   the configurations: direct access, zcfs modes, --compare peers
runner.py    rounds, measurement, the results document
report.py    the table and the chart
"""
