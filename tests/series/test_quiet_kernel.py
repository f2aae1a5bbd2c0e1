"""Headless runs print the series' lines, not ipykernel's warning about TCP without encryption."""

from __future__ import annotations

import os

import nbformat
import papermill as pm

from chi_helpers.series import quiet_kernel


def tiny_notebook(path):
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_code_cell("print('hello from the kernel')"))
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def run(tmp_path, **kwargs):
    tiny_notebook(tmp_path / "in.ipynb")
    pm.execute_notebook(str(tmp_path / "in.ipynb"), str(tmp_path / "out.ipynb"), kernel_name="python3",
                        progress_bar=False, cwd=str(tmp_path), **kwargs)
    out = nbformat.read(tmp_path / "out.ipynb", 4)
    assert out.cells[0].outputs[0]["text"] == "hello from the kernel\n"


def test_the_default_kernel_warns_and_ours_does_not(tmp_path, capfd):
    (tmp_path / "tcp").mkdir()
    run(tmp_path / "tcp")
    assert "without encryption" in capfd.readouterr().err  # what `make run` used to print per notebook

    (tmp_path / "ipc").mkdir()
    run(tmp_path / "ipc", kernel_manager_class="chi_helpers.series.quiet_kernel.QuietKernelManager")
    assert "without encryption" not in capfd.readouterr().err
    # The sockets live in the process's own folder, never next to the notebook.
    assert sorted(os.listdir(tmp_path / "ipc")) == ["in.ipynb", "out.ipynb"]
    assert quiet_kernel.socket_dir().is_dir()
