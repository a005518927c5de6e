"""The first SIGTERM/SIGINT only asks the loop to stop (the step finishes, then a save); the handlers are
the previous ones again after training. (The real run, signal and resume: tests/e2e/test_preemption.py.)"""
import os
import signal

from megatron_mcpo.training.interrupt import StopRequest, TrainingInterrupted


def test_first_signal_requests_a_stop_and_handlers_are_restored(capsys):
    before = signal.getsignal(signal.SIGTERM)
    with StopRequest() as stop:
        assert stop.agreed() is None
        os.kill(os.getpid(), signal.SIGTERM)  # handled: the process goes on
        assert stop.agreed() == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before
    assert "SIGTERM received: finishing the current step" in capsys.readouterr().err
    e = TrainingInterrupted(signal.SIGINT, "/ckpt/iter_0000003")
    assert e.exit_code == 130 and str(e) == "stopped by SIGINT: saved /ckpt/iter_0000003"
