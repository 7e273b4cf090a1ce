"""The loop and its budget, on an injected clock: the budget covers training, validation and the final
validation; a cut epoch is logged and saved as not finished."""

import pytest

from medseg3d.engine import callbacks as cb
from medseg3d.engine.loop import Callback, Loop
from medseg3d.engine.state import TrainState


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t

    def advance(self, s):
        self.t += s


class Record(Callback):
    def __init__(self):
        self.epochs = []

    def on_epoch_end(self, loop, row, finished):
        self.epochs.append((row["epoch"], row["iterations"], finished))


def run(budget, step_s=1.0, val_s=3.0, final_s=5.0, prior_val=3.0, prior_final=5.0, save_s=1.0,
        iterations=100, per_epoch=10):
    clock = Clock()

    def step():
        clock.advance(step_s)
        return 1.0

    def validate():
        clock.advance(val_s)
        return {"val_dice_mean": 0.5}

    finals = []

    def final():
        clock.advance(final_s)
        finals.append(clock())

    rec = Record()
    callbacks = [cb.Budget(budget, 0.0, prior_val, prior_final, save_s), cb.Validation(validate, 1), rec,
                 cb.FinalValidation(final)]
    state = TrainState()
    loop = Loop(step, state, iters_per_epoch=per_epoch, total_iterations=iterations, callbacks=callbacks,
                clock=clock)
    loop.run()
    return state, rec, finals, clock()


def test_budget_leaves_room_for_validation_and_the_final_validation():
    state, rec, finals, end = run(budget=40)
    assert state.stop == "budget" and finals
    assert end <= 40  # everything, the final validation included, inside the budget
    assert end > 40 - 1 - 5 - 3  # and not much earlier than needed
    assert rec.epochs[-1][2] is False  # the cut epoch is logged as not finished
    assert [e for e, _, _ in rec.epochs] == list(range(1, len(rec.epochs) + 1))


def test_a_slower_validation_than_estimated_moves_the_stop_earlier():
    _, _, _, end_ok = run(budget=60)
    state, _, _, end_slow = run(budget=60, val_s=6.0, final_s=10.0)  # both twice the prior estimate
    assert end_slow <= 60 and state.stop == "budget"
    assert end_ok <= 60


def test_validation_is_skipped_when_it_would_not_fit():
    """A validation that would push the final one past the budget does not run."""
    state, rec, finals, end = run(budget=16, val_s=8.0, prior_val=8.0, per_epoch=5)
    assert end <= 16 and finals


def test_without_budget_the_loop_runs_every_iteration():
    clock = Clock()
    rec = Record()
    state = TrainState()
    Loop(lambda: (clock.advance(1), 0.5)[1], state, iters_per_epoch=4, total_iterations=10,
         callbacks=[rec], clock=clock).run()
    assert state.iteration == 10 and state.epoch == 3 and state.stop is None
    assert rec.epochs == [(1, 4, True), (2, 8, True), (3, 10, True)]


@pytest.mark.parametrize("stop_at", [3, 4])
def test_a_stop_cuts_the_epoch_and_keeps_its_losses(stop_at):
    class StopAt(Callback):
        def on_step_end(self, loop, loss):
            if loop.state.iteration == stop_at:
                loop.state.stop = "SIGTERM"

    state = TrainState()
    rec = Record()
    Loop(lambda: 0.25, state, iters_per_epoch=4, total_iterations=12, callbacks=[StopAt(), rec]).run()
    assert state.iteration == stop_at
    finished = stop_at % 4 == 0
    assert rec.epochs[-1] == (1, stop_at, finished)
    assert state.epoch == (1 if finished else 0)
    assert state.epoch_losses == ([] if finished else [0.25] * stop_at)


def test_a_crash_in_the_loop_puts_the_signal_handlers_back():
    """A loop that raises (a diverged loss, a bad batch) leaves no handler of its own installed, so a notebook's
    next Ctrl-C interrupts as usual."""
    import signal

    before = signal.getsignal(signal.SIGINT)

    def boom():
        raise RuntimeError("bad batch")

    sig = cb.Signals()
    with pytest.raises(RuntimeError):
        Loop(boom, TrainState(), iters_per_epoch=2, total_iterations=4, callbacks=[sig]).run()
    assert signal.getsignal(signal.SIGINT) is before


def test_a_signal_stops_at_the_next_step_end_not_in_the_middle_of_an_epoch_end():
    """The handler only notes the signal; the loop stops after the step (or the epoch) that is running."""
    import os
    import signal

    seen = []

    class Record(Callback):
        def on_epoch_end(self, loop, row, finished):
            seen.append((row["iterations"], finished, loop.state.stop))

    def step():
        if len(seen) == 0 and state.iteration == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives during the third step
        return 0.5

    state = TrainState()
    sig = cb.Signals()
    Loop(step, state, iters_per_epoch=5, total_iterations=10, callbacks=[sig, Record()]).run()
    assert state.stop == "SIGTERM" and state.iteration == 3
    assert seen == [(3, False, "SIGTERM")]
