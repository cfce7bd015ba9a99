"""Starting weights for a system's links: closed form, random, or a link file."""

from __future__ import annotations

import pathlib

from mlcpatch.links.closed_form import closed_form_links, samples_from_model
from mlcpatch.links.files import load_links
from mlcpatch.links.linkfile import AgentInfo
from mlcpatch.links.spec import LinkSpec
from mlcpatch.links.torch_module import LinkSet
from mlcpatch.training.unroll import Agent


def initial_links(
    init: str,
    specs: list[LinkSpec],
    agents: dict[str, Agent],
    texts_by_agent: dict[str, list[str]],
) -> LinkSet:
    infos = [AgentInfo(n, a.backbone.hidden_size, a.backbone.key) for n, a in agents.items()]
    if init == "random":
        return LinkSet(specs, infos)
    if init == "closed-form":
        samples = [
            samples_from_model(name, a.backbone.model, a.backbone.tokenizer, texts_by_agent[name])
            for name, a in agents.items()
        ]
        link_set = LinkSet.from_file(closed_form_links(samples, specs=specs))
        link_set.agents = infos
        return link_set
    link_file = load_links(pathlib.Path(init))
    link_file.check_models({n: a.backbone.hidden_size for n, a in agents.items()}, init)
    link_set = LinkSet(specs, infos)
    link_set.load_file(link_file)
    return link_set
