"""Control-machine side of the deploy: reading and validating inventories.

Not installed on hosts (that is the `autocode` package); imported by inventory.py and
deploy.py, which pyinfra runs with the repository on sys.path.
"""
