"""The command line front end: argument handling (running notebooks is CI's job)."""
import pytest

from mrcnn_np.__main__ import main, run_bench, run_figures


def test_figures_without_matching_notebook_exits_with_message():
    with pytest.raises(SystemExit, match="no notebook"):
        run_figures(["does-not-exist-*.ipynb"], timeout=10)


def test_bench_unknown_name_lists_the_known_ones():
    with pytest.raises(SystemExit, match="unknown benchmark"):
        run_bench(["no_such_bench"])


def test_command_is_required(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "figures" in capsys.readouterr().err
