"""Import of RecursiveMAS reference link checkpoints (PyTorch state dicts), by shape."""

from __future__ import annotations

import json
import pathlib

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from mlcpatch.links.files import load_links
from mlcpatch.links.linkfile import LinkFileError
from mlcpatch.links.torch_module import LinkSet
from mlcpatch.training.command import links_command
from mlcpatch.training.reference_import import import_reference

GEN = torch.Generator().manual_seed(0)


def rand(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=GEN) * 0.3


def linear(prefix: str, out_dim: int, in_dim: int) -> dict[str, torch.Tensor]:
    return {f"{prefix}.weight": rand(out_dim, in_dim), f"{prefix}.bias": rand(out_dim)}


def norm(prefix: str, dim: int) -> dict[str, torch.Tensor]:
    return {f"{prefix}.weight": 1 + rand(dim), f"{prefix}.bias": rand(dim)}


def lin(state: dict[str, torch.Tensor], prefix: str, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, state[f"{prefix}.weight"], state[f"{prefix}.bias"])


def ln(state: dict[str, torch.Tensor], prefix: str, x: torch.Tensor) -> torch.Tensor:
    weight, bias = state[f"{prefix}.weight"], state[f"{prefix}.bias"]
    return F.layer_norm(x, (x.shape[-1],), weight, bias, 1e-5)


def reference_inner_ln(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    # The reference ln_res_adapter: post_ln(x + proj2(gelu(proj1(pre_ln(x))))).
    return ln(
        state,
        "post_ln",
        x + lin(state, "proj2", F.gelu(lin(state, "proj1", ln(state, "pre_ln", x)))),
    )


def reference_outer_ln(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    # The reference outer_ln_res_adapter: ln_target(proj2(gelu(proj1(ln_source(x)))) + W3·x + b3).
    mlp = lin(state, "proj2", F.gelu(lin(state, "proj1", ln(state, "ln_source", x))))
    return ln(state, "ln_target", mlp + lin(state, "residual_proj", x))


def reference_outer_res(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    return lin(state, "proj2", F.gelu(lin(state, "proj1", x))) + lin(state, "residual_proj", x)


def reference_inner_res(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    return x + lin(state, "proj2", F.gelu(lin(state, "proj1", x)))


def _save(path: pathlib.Path, state: dict[str, torch.Tensor], prefix: str = "") -> pathlib.Path:
    torch.save({prefix + k: v for k, v in state.items()}, path)
    return path


def _imported_output(path: pathlib.Path, x: torch.Tensor, **kwargs: str) -> torch.Tensor:
    link_file = import_reference(path, **kwargs)
    links = LinkSet.from_file(link_file)
    with torch.no_grad():
        return links[links.names()[0]](x)


def test_inner_ln_res_adapter(tmp_path: pathlib.Path) -> None:
    state = {
        **norm("pre_ln", 16),
        **linear("proj1", 16, 16),
        **linear("proj2", 16, 16),
        **norm("post_ln", 16),
    }
    path = _save(tmp_path / "adapter.pt", state, prefix="adapter.")
    x = rand(3, 16)
    link_file = import_reference(path, source_agent="planner")
    spec = link_file.links[0]
    assert (spec.name, spec.kind, spec.variant, spec.hidden) == (
        "inner_planner",
        "inner",
        "ln-residual",
        16,
    )
    torch.testing.assert_close(
        _imported_output(path, x, source_agent="planner"), reference_inner_ln(state, x)
    )


def test_outer_ln_res_adapter_folds_residual_bias(tmp_path: pathlib.Path) -> None:
    state = {
        **norm("ln_source", 16),
        **linear("proj1", 48, 16),
        **linear("proj2", 24, 48),
        **linear("residual_proj", 24, 16),
        **norm("ln_target", 24),
    }
    path = _save(tmp_path / "outer.pt", state)
    x = rand(3, 16)
    link_file = import_reference(path, source_agent="a", target_agent="b")
    spec = link_file.links[0]
    assert (spec.name, spec.kind, spec.variant, spec.in_dim, spec.out_dim, spec.hidden) == (
        "outer_a_to_b",
        "outer",
        "ln-residual",
        16,
        24,
        48,
    )
    torch.testing.assert_close(
        _imported_output(path, x, source_agent="a", target_agent="b"), reference_outer_ln(state, x)
    )


def test_outer_res_adapter_without_layer_norms(tmp_path: pathlib.Path) -> None:
    state = {
        **linear("proj1", 24, 16),
        **linear("proj2", 24, 24),
        **linear("residual_proj", 24, 16),
    }
    path = tmp_path / "outer.pt"
    torch.save({"state_dict": state, "step": 10}, path)  # trainer checkpoints wrap the weights
    x = rand(2, 16)
    out = _imported_output(path, x, source_agent="a", target_agent="b")
    torch.testing.assert_close(out, reference_outer_res(state, x))


def test_inner_without_layer_norms_needs_the_adapter_type(tmp_path: pathlib.Path) -> None:
    state = {**linear("proj1", 8, 8), **linear("proj2", 8, 8)}
    path = _save(tmp_path / "adapter.pt", state)
    with pytest.raises(LinkFileError, match=r"either '2layer' \(no residual\) or '2layer_res'"):
        import_reference(path)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"adapter_type": "res_adapter"}))
    x = rand(2, 8)
    torch.testing.assert_close(_imported_output(path, x), reference_inner_res(state, x))
    with pytest.raises(LinkFileError, match=r"adapter type 'adapter' has no equivalent"):
        import_reference(path, adapter_type="adapter")


def test_unsupported_layouts_are_refused(tmp_path: pathlib.Path) -> None:
    linear_only = _save(tmp_path / "lin.pt", linear("proj1", 8, 8))
    with pytest.raises(LinkFileError, match=r"single-layer \(linear\) reference adapters"):
        import_reference(linear_only)
    no_anchor = _save(tmp_path / "x.pt", linear("fc", 8, 8))
    with pytest.raises(LinkFileError, match=r"no 'proj1.weight' tensor"):
        import_reference(no_anchor)
    two = _save(
        tmp_path / "two.pt",
        {
            **{f"a.{k}": v for k, v in linear("proj1", 8, 8).items()},
            **{f"b.{k}": v for k, v in linear("proj1", 8, 8).items()},
        },
    )
    with pytest.raises(LinkFileError, match=r"holds several links"):
        import_reference(two)
    bad = {
        **norm("ln_source", 16),
        **linear("proj1", 48, 16),
        **linear("proj2", 24, 48),
        **linear("residual_proj", 24, 15),
        **norm("ln_target", 24),
    }
    with pytest.raises(
        LinkFileError,
        match=r"residual_proj.weight has shape \[24, 15\], expected "
        r"\[24, 16\]",
    ):
        import_reference(_save(tmp_path / "bad.pt", bad))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(LinkFileError, match=r"cannot load as a PyTorch checkpoint"):
        import_reference(tmp_path / "junk.pt")


def test_import_command_writes_a_loadable_file(tmp_path: pathlib.Path) -> None:
    state = {
        **norm("pre_ln", 16),
        **linear("proj1", 16, 16),
        **linear("proj2", 16, 16),
        **norm("post_ln", 16),
    }
    path = _save(tmp_path / "adapter.pt", state)
    result = CliRunner().invoke(
        links_command, ["import-reference", str(path), str(tmp_path / "out"), "--from", "solver"]
    )
    assert result.exit_code == 0, result.output
    assert load_links(tmp_path / "out").links[0].name == "inner_solver"
