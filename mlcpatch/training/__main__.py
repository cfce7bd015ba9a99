"""`python -m mlcpatch.training` — the trainer without the rest of the CLI.

This is the entry point for several GPUs or nodes, since accelerate starts Python modules:

    accelerate launch -m mlcpatch.training train --model A --model B --data qa.jsonl --out runs/x
    accelerate launch --num_processes 4 -m mlcpatch.training train --config run.toml
    accelerate launch --multi_gpu --num_machines 2 --machine_rank 0 --main_process_ip HOST \
        --num_processes 16 -m mlcpatch.training train --config run.toml
"""

from __future__ import annotations

import click

from mlcpatch.errors import Group
from mlcpatch.training.command import links_command, train_command


@click.group(cls=Group)
def main() -> None:
    """RecursiveLink trainer and link-file tools."""


main.add_command(train_command)
main.add_command(links_command)

if __name__ == "__main__":
    main()
