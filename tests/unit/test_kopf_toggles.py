"""kopf's index start-up wakes every waiting object on every toggle change: n^2 / 2 wake-ups
for n listed objects. The operator's patch (kube/operator.py quiet_toggle_sets) wakes them
when the set's state flips only: the same outcome for every waiter, n wake-ups in all."""
import asyncio

from kopf._cogs.aiokits import aiotoggles

from keymigration.kube.operator import quiet_toggle_sets


def start_up(objects: int) -> tuple[int, list[bool]]:
    """kopf's pattern: each listed object makes a toggle, indexes itself, drops its toggle and
    waits until the set (all()) is on. Returns how often a waiter looked, and what each saw."""
    looked = 0

    async def main():
        nonlocal looked
        indexed = aiotoggles.ToggleSet(all)
        blocker = await indexed.make_toggle(name="orchestration blocker")
        toggles = [await indexed.make_toggle(name=str(i)) for i in range(objects)]
        original = indexed.is_on

        def counting() -> bool:
            nonlocal looked
            looked += 1
            return original()

        indexed.is_on = counting

        async def one(toggle):
            await indexed.drop_toggle(toggle)
            await indexed.wait_for(True)
            return indexed.is_on()

        tasks = []
        for toggle in toggles:  # the listing arrives over time: one object indexed after another
            tasks.append(asyncio.create_task(one(toggle)))
            for _ in range(3):
                await asyncio.sleep(0)
        await asyncio.sleep(0.01)
        assert not any(t.done() for t in tasks)  # held back while the blocker is there
        await indexed.drop_toggle(blocker)
        return await asyncio.wait_for(asyncio.gather(*tasks), 30)

    seen = asyncio.run(main())
    return looked, seen


def test_waiters_all_wake_when_the_set_turns_on_and_wake_ups_are_linear():
    quiet_toggle_sets()
    looked, seen = start_up(1000)
    assert seen == [True] * 1000
    assert looked < 10 * 1000, looked  # unpatched: 502,500 (n^2 / 2)


def test_the_patch_is_applied_once_and_keeps_waking_waiters_of_a_flip_back():
    quiet_toggle_sets()
    quiet_toggle_sets()

    async def main():
        paused = aiotoggles.ToggleSet(any)
        waiter = asyncio.create_task(paused.wait_for(True))
        toggle = await paused.make_toggle(True, name="peering")  # on: the set flips on
        await asyncio.wait_for(waiter, 5)
        back = asyncio.create_task(paused.wait_for(False))
        await paused.drop_toggle(toggle)
        await asyncio.wait_for(back, 5)
        return paused.is_on()

    assert asyncio.run(main()) is False
