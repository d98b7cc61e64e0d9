from effrepro.specdec.cli import entry

entry()
