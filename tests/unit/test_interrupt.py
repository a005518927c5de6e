"""The first SIGTERM/SIGINT only asks the loop to stop (the step finishes, then a save); the handlers are
the previous ones again after training. (The real run, signal and resume: tests/e2e/test_preemption.py.)"""
import os
import signal
import subprocess
import sys
import textwrap
import time

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


def test_second_signal_ends_the_process_during_a_long_native_call():
    """After the first signal the second one ends the process at once, even while the main thread is inside
    one long native call (a Python-level handler would wait for it to return: here ~30 chained 1500x1500
    matmuls in one torch call, tens of seconds)."""
    child = textwrap.dedent("""
        import os, signal, torch
        from megatron_mcpo.training.interrupt import StopRequest
        torch.set_num_threads(1)
        with StopRequest():
            os.kill(os.getpid(), signal.SIGINT)
            print("computing", flush=True)
            torch.linalg.matrix_power(torch.eye(1500), 2**30 - 1)
        print("never reached", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "computing\n"
        time.sleep(0.5)  # inside matrix_power by now
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == -signal.SIGTERM
    finally:
        proc.kill()
    assert "SIGINT received" in proc.stderr.read()
