"""The work of each command line, after its flags are parsed: `fewshot.cli.runners.<command>.run(args)`.

The command modules (`fewshot.cli.<command>`) build their parsers without importing torch, so that `--help`
answers at once; each imports its runner only once the flags are parsed.
"""
