"""What the node's commands print and how the series reads it back: photo counts, the Jupyter address."""

from __future__ import annotations

import json

from chi_helpers.chameleon import node_stack


def test_photo_counts_read_what_food11_verify_prints():
    from chi_helpers import food11

    printed = food11.describe({"training": {"class_00": 9000, "class_01": 866}, "validation": {"class_00": 3430},
                               "evaluation": {"class_00": 3347}})
    assert node_stack.photo_counts(printed) == {"training": 9866, "validation": 3430, "evaluation": 3347}
    assert node_stack.photo_counts("error: /data/Food-11 has no training folder") == {}


def listing(root_dir: str, token: str = "abc123") -> str:
    return json.dumps({"base_url": "/", "hostname": "0.0.0.0", "port": 8888, "root_dir": root_dir, "token": token,
                       "url": "http://4f2c9a1b7d3e:8888/"})


def test_the_jupyter_address_names_the_node_and_the_notebook_as_the_file_browser_shows_it():
    # The ROCm image's server starts in the checkout; a server started in the user's home shows it as work/.
    assert node_stack.jupyter_url(listing("/home/jovyan/work"), "129.114.0.9", "amd") == \
        "http://129.114.0.9:8888/lab/tree/workspace_mlflow/amd/05_track_pytorch.ipynb?token=abc123"
    assert node_stack.jupyter_url(listing("/home/jovyan"), "129.114.0.9", "nvidia") == \
        "http://129.114.0.9:8888/lab/tree/work/workspace_mlflow/nvidia/05_track_pytorch.ipynb?token=abc123"


def test_no_address_while_the_server_lists_nothing_or_no_token():
    assert node_stack.jupyter_url("", "129.114.0.9", "nvidia") is None
    assert node_stack.jupyter_url(listing("/home/jovyan", token=""), "129.114.0.9", "nvidia") is None


def test_printed_ssh_commands_quote_the_remote_side_and_name_the_key():
    command = node_stack.password_command("129.114.0.9", "/home/jovyan/work/.ssh/id_rsa")
    assert command == ("ssh -i /home/jovyan/work/.ssh/id_rsa cc@129.114.0.9 "
                       "'grep MLFLOW_TRACKING_PASSWORD ~/mlflow-stack.env'")
    assert node_stack.ssh_command("129.114.0.9", "/k/id rsa", "ls ~") == "ssh -i '/k/id rsa' cc@129.114.0.9 'ls ~'"
