"""RecursiveLinks and their files: the one home of the link contract of docs/DESIGN.md.

The loop, the trainer, eval and publish all take links from here; web/src/links.js follows the
same rules (tests/test_links_js_parity.py). Modules, one job each:
  spec           names, kinds (inner/outer), forms (residual/ln-residual), shapes: LinkSpec
  linkfile       links as numpy arrays + validation: LinkFile, AgentInfo, LinkFileError
  forward        the forms' math in numpy and Link, a link ready to run (the loop's)
  binary         links.safetensors + links.json;  recursivelink  recursivelink.json
  files          load/save/convert by path, the format chosen from the path
  closed_form    links fitted by least squares, no training (closed_form_links)
  torch_module   the forms as PyTorch modules (the trainer's; needs torch, not imported here)
"""

from __future__ import annotations

from mlcpatch.links.closed_form import AgentSamples, closed_form_links
from mlcpatch.links.files import convert_links, load_links, save_links
from mlcpatch.links.forward import Link
from mlcpatch.links.linkfile import AgentInfo, LinkFile, LinkFileError
from mlcpatch.links.spec import LinkSpec, LinkSpecError, make_spec

__all__ = [
    "AgentInfo",
    "AgentSamples",
    "Link",
    "LinkFile",
    "LinkFileError",
    "LinkSpec",
    "LinkSpecError",
    "closed_form_links",
    "convert_links",
    "load_links",
    "make_spec",
    "save_links",
]
