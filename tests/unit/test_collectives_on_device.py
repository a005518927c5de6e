"""NCCL reduces and gathers device tensors only: a collective fed a host tensor fails on GPUs at DP/TP/PP > 1
(never at one GPU, never on gloo, so no CPU run and no single-GPU check sees it). Every function of the
package that calls a tensor collective must not move its data to the host: no `.cpu()`, no literal
`device="cpu"` and no new tensor without a device (torch.tensor(...) lands on the host) in it. Object
collectives pickle through the current device and are fine."""
import ast
import os

import megatron_mcpo

FACTORIES = {"tensor", "zeros", "ones", "empty", "full", "arange", "as_tensor"}
TENSOR_COLLECTIVES = {"all_reduce", "all_gather", "all_gather_into_tensor", "broadcast", "reduce", "reduce_scatter",
                      "reduce_scatter_tensor", "all_to_all", "all_to_all_single", "send", "recv", "isend", "irecv"}


def _host_moves(fn: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(fn):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "cpu":
            found.append(f"line {node.lineno}: .cpu()")
        if isinstance(node, ast.keyword) and node.arg == "device" and isinstance(node.value, ast.Constant) \
                and node.value.value == "cpu":
            found.append(f"line {node.value.lineno}: device='cpu'")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in FACTORIES \
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch" \
                and not any(k.arg == "device" for k in node.keywords):
            found.append(f"line {node.lineno}: torch.{node.func.attr}() without a device")
    return sorted(found, key=lambda m: int(m.split()[1].rstrip(":")))


def _calls_tensor_collective(fn: ast.AST) -> bool:
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in TENSOR_COLLECTIVES
               and isinstance(n.func.value, ast.Name) and n.func.value.id == "dist" for n in ast.walk(fn))


def test_no_collective_is_fed_a_host_tensor():
    root = os.path.dirname(megatron_mcpo.__file__)
    offenders, checked = [], 0
    for folder, _, files in os.walk(root):
        for name in files:
            if not name.endswith(".py") or name == "cpu_backend.py":  # the gloo-only CPU shim
                continue
            path = os.path.join(folder, name)
            tree = ast.parse(open(path).read(), path)
            for fn in ast.walk(tree):
                if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and _calls_tensor_collective(fn):
                    checked += 1
                    offenders += [f"{os.path.relpath(path, root)}:{fn.name} {m}" for m in _host_moves(fn)]
    assert checked >= 10, checked  # the scan sees the package's collectives
    assert not offenders, offenders


def test_the_scan_finds_a_host_tensor_fed_to_a_collective():
    bad = ast.parse("def f(m, group):\n    s = torch.stack([v.double().cpu() for v in m])\n    n = torch.tensor([1.0])\n"
                    "    dist.all_reduce(s, group=group)\n    dist.all_reduce(n, group=group)\n")
    fn = bad.body[0]
    assert _calls_tensor_collective(fn)
    assert _host_moves(fn) == ["line 2: .cpu()", "line 3: torch.tensor() without a device"]
