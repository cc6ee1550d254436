"""The ``--input``/``--dim`` syntax: ``parse_input_spec`` and ``parse_dim_spec`` (no torch)."""

from __future__ import annotations

import pytest

from torchport.runtimes import DimRange, TensorSpec, UsageError, parse_dim_spec, parse_input_spec

# --------------------------------------------------------------------------- parse_input_spec


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("input_ids:int64[batch,seq]", TensorSpec("input_ids", "int64", ["batch", "seq"])),
        ("x:float32[1,3,224,224]", TensorSpec("x", "float32", [1, 3, 224, 224])),
        ("mask:bool[batch,seq]", TensorSpec("mask", "bool", ["batch", "seq"])),
        ("t:float32[]", TensorSpec("t", "float32", [])),
        (" x : float [ batch , 4 ] ", TensorSpec("x", "float32", ["batch", 4])),
        ("h:float16[batch,8]", TensorSpec("h", "float16", ["batch", 8])),
        ("b:bfloat16[2]", TensorSpec("b", "bfloat16", [2])),
        ("ids:int64[batch,seq]{0..30521}", TensorSpec("ids", "int64", ["batch", "seq"], (0, 30521))),
    ],
)
def test_parse_input_spec(text: str, expected: TensorSpec) -> None:
    assert parse_input_spec(text) == expected


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        (
            "input_ids",
            r"--input 'input_ids': expected name:dtype\[dims\], e\.g\. \"input_ids:int64\[batch,seq\]\"",
        ),
        (":int64[batch]", r"the input name is missing before ':'"),
        ("x:[batch]", r"the dtype is missing after ':'"),
        ("x:complex64[2]", r"unsupported dtype 'complex64'; use one of: bool, .*int64.*float32"),
        ("x:string[2]", r"unsupported dtype 'string'; use one of:"),
        ("x:float32", r"the shape is missing; add \[dims\] after the dtype"),
        ("x:float32[2,3", r"malformed shape '\[2,3'; write it as \[dim,dim,\.\.\.\]"),
        ("x:float32[2,-1]", r"dim '-1' is neither a size \(an int >= 0\) nor a dim name"),
        ("x:float32[2,3.5]", r"dim '3\.5' is neither a size"),
        ("x:float32[2,,3]", r"empty dim in '\[2,,3\]'"),
        ("1x:float32[2]", r"input name '1x' is not a valid identifier"),
        ("x:int64[2]{5..1}", r"value range \{5\.\.1\} has low > high"),
        ("x:int64[2]{a..b}", r"malformed value range \{a\.\.b\}"),
    ],
)
def test_parse_input_spec_errors(text: str, pattern: str) -> None:
    with pytest.raises(UsageError, match=pattern) as info:
        parse_input_spec(text)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- parse_dim_spec


def test_parse_dim_spec() -> None:
    assert parse_dim_spec("batch=1..64") == ("batch", DimRange(1, 64))
    assert parse_dim_spec(" seq = 1 .. 512 ") == ("seq", DimRange(1, 512))
    assert parse_dim_spec("n=0..4") == ("n", DimRange(0, 4))


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        (
            "batch=8",
            r"a dynamic dim needs a range such as batch=1\.\.8; for a fixed size write the number in --input",
        ),
        ("batch", r"expected name=min\.\.max, e\.g\. \"batch=1\.\.64\""),
        ("=1..4", r"the dim name is missing before '='"),
        ("batch=1-64", r"range '1-64' is not min\.\.max with ints >= 0"),
        ("batch=64..1", r"min 64 is greater than max 1"),
        ("2batch=1..4", r"dim name '2batch' is not a valid identifier"),
    ],
)
def test_parse_dim_spec_errors(text: str, pattern: str) -> None:
    with pytest.raises(UsageError, match=pattern):
        parse_dim_spec(text)
