"""The one command line, `mlcpatch`; each subcommand lives beside the code it drives."""

from __future__ import annotations

import click

from mlcpatch import __version__
from mlcpatch.errors import Group


# Group: every command's MlcpatchError ends as one line and exit status 2 (mlcpatch/errors.py).
@click.group(
    cls=Group,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="mlcpatch")
def main() -> None:
    """RecursiveMAS for WebGPU: patch, build and run models whose last hidden states are exposed.

    \b
    Typical flow:
      mlcpatch archs                         list architectures the patcher knows
      mlcpatch patch qwen2 --diff            see what the patch adds to a model definition
      mlcpatch build --arch qwen2 --model DIR   HF weights -> artifact folder (shards + library)
      mlcpatch generate ARTIFACTS --prompt "Hi"
      mlcpatch run --model ARTIFACTS --mode compare "question"   latent loop vs text loop
      mlcpatch eval --model ARTIFACTS --questions arithmetic   accuracy of single/text/latent
      mlcpatch serve --artifacts artifacts   the browser playground on http://127.0.0.1:8000
    """


def _register() -> None:
    from mlcpatch.loop.command import bench_command, run_command
    from mlcpatch.patcher.command import archs_command, patch_command

    main.add_command(patch_command)
    main.add_command(archs_command)
    main.add_command(run_command)
    main.add_command(bench_command)

    from mlcpatch.eval.command import eval_command

    main.add_command(eval_command)

    from mlcpatch.publish.command import publish_command
    from mlcpatch.training.command import links_command, train_command

    main.add_command(publish_command)
    main.add_command(train_command)
    main.add_command(links_command)

    from mlcpatch.serve import serve_command

    main.add_command(serve_command)

    from mlcpatch.build.command import build_command, generate_command, hidden_command

    main.add_command(build_command)
    main.add_command(generate_command)
    main.add_command(hidden_command)


_register()


if __name__ == "__main__":
    main()
