"""``animerec tensorboard`` serves a run's logs on 127.0.0.1 and prints the URL; a bad target is a
one-line error."""
import socket
import time
import urllib.request

import pytest

from research import tb
from research.errors import ConfigError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_serves_on_loopback(tmp_path, capsys):
    (tmp_path / "logs").mkdir()
    port = _free_port()
    proc = tb.serve(str(tmp_path), port=port, block=False)
    try:
        assert f"http://127.0.0.1:{port}/" in capsys.readouterr().out
        deadline, status = time.time() + 90, None
        while time.time() < deadline and status is None:
            try:
                status = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).status
            except OSError:
                assert proc.poll() is None, "tensorboard exited"
                time.sleep(0.5)
        assert status == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_unknown_target_is_a_config_error():
    with pytest.raises(ConfigError, match="no run or experiment folder"):
        tb.log_dir("no/such/run")
