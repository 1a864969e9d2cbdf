"""The port watch's filter: which link events are worth a reconcile (issue 9).

The sequences are the messages the kernel sends (recorded on 6.18 with `ip monitor`-style
subscription): each action announces itself with one or more RTM_NEWLINK messages, in the
plain family (flags in the linkinfo's slave data) and the bridge family (flags in PROTINFO).
"""

from __future__ import annotations

from bridgeport.adapters.portwatch import LinkEvent, PortFilter

BR, FOREIGN, PORT = 2, 3, 10
HAIRPIN_ISOLATED, HAIRPIN_ONLY, UNSET = (1, 1), (1, 0), (0, 0)


def watching(isolated: bool = True) -> PortFilter:
    f = PortFilter()
    f.expect({"bp-a": isolated})
    f.seed(
        [
            LinkEvent(BR, name="bp-a"),
            LinkEvent(FOREIGN, name="docker0"),
            LinkEvent(PORT, name="veth1"),
        ]
    )
    return f


def test_a_port_joining_our_bridge_is_relevant_until_its_flags_are_ours() -> None:
    f = watching()
    assert f.relevant(LinkEvent(PORT, master=BR, flags=UNSET))  # joined
    assert f.relevant(LinkEvent(PORT, master=BR, flags=UNSET))  # not configured yet
    # Our own write, announced in both families: nothing to do.
    assert not f.relevant(LinkEvent(PORT, master=BR, flags=HAIRPIN_ISOLATED))
    assert not f.relevant(LinkEvent(PORT, master=BR, flags=HAIRPIN_ISOLATED))
    # Carrier and other changes of a configured port, with or without flags in the message.
    assert not f.relevant(LinkEvent(PORT, name="veth1", master=BR, flags=HAIRPIN_ISOLATED))
    assert not f.relevant(LinkEvent(PORT, master=BR))


def test_flags_are_judged_against_the_bridge_policy() -> None:
    f = watching(isolated=False)
    f.relevant(LinkEvent(PORT, master=BR, flags=UNSET))
    assert not f.relevant(LinkEvent(PORT, master=BR, flags=HAIRPIN_ONLY))
    assert f.relevant(LinkEvent(PORT, master=BR, flags=HAIRPIN_ISOLATED))  # someone isolated it
    f.expect({"bp-a": True})  # the network changed to interContainer: false
    assert not f.relevant(LinkEvent(PORT, master=BR, flags=HAIRPIN_ISOLATED))


def test_someone_else_clearing_a_flag_is_relevant() -> None:
    f = watching()
    f.relevant(LinkEvent(PORT, master=BR, flags=UNSET))
    f.relevant(LinkEvent(PORT, master=BR, flags=HAIRPIN_ISOLATED))
    assert f.relevant(LinkEvent(PORT, master=BR, flags=(0, 1)))  # hairpin off


def test_leaving_our_bridge_is_relevant_once() -> None:
    f = watching()
    f.relevant(LinkEvent(PORT, master=BR, flags=HAIRPIN_ISOLATED))
    assert f.relevant(LinkEvent(PORT, unported=True))  # bridge-family RTM_DELLINK
    assert not f.relevant(LinkEvent(PORT, name="veth1"))  # the plain message, no master now
    f.relevant(LinkEvent(PORT, master=BR, flags=HAIRPIN_ISOLATED))
    assert f.relevant(LinkEvent(PORT, deleted=True))  # the veth deleted outright
    assert f.relevant(LinkEvent(PORT + 1, master=BR))
    assert f.relevant(LinkEvent(PORT + 1, master=FOREIGN))  # moved to another bridge


def test_foreign_bridges_and_unplanned_bridges_are_ignored() -> None:
    f = watching()
    assert not f.relevant(LinkEvent(PORT, master=FOREIGN, flags=UNSET))
    assert not f.relevant(LinkEvent(PORT, master=FOREIGN, flags=(0, 1)))
    assert not f.relevant(LinkEvent(PORT, unported=True))
    assert not f.relevant(LinkEvent(FOREIGN, deleted=True))
    # A bridge of ours that is no longer planned (we are deleting it): its ports are not ours.
    f.relevant(LinkEvent(PORT, master=BR, flags=UNSET))
    f.expect({})
    assert not f.relevant(LinkEvent(PORT, unported=True))
    assert not f.relevant(LinkEvent(BR, deleted=True))


def test_our_bridge_itself() -> None:
    """Our writes to the bridge (MTU, alias, up) are not port events; its deletion is."""
    f = watching()
    assert not f.relevant(LinkEvent(BR, name="bp-a"))
    assert f.relevant(LinkEvent(BR, deleted=True))


def test_seed_learns_existing_ports_without_reacting() -> None:
    """At start the dump's ports are known: their later carrier events are not joins."""
    f = PortFilter()
    f.expect({"bp-a": True})
    f.seed([LinkEvent(BR, name="bp-a"), LinkEvent(PORT, master=BR, flags=HAIRPIN_ISOLATED)])
    assert not f.relevant(LinkEvent(PORT, master=BR, flags=HAIRPIN_ISOLATED))
    assert f.relevant(LinkEvent(PORT, master=BR, flags=UNSET))


def test_a_bridge_renamed_into_the_plan_is_recognised() -> None:
    f = PortFilter()
    f.expect({"bp-a": False})
    f.seed([LinkEvent(BR, name="tmp0")])
    assert not f.relevant(LinkEvent(PORT, master=BR, flags=UNSET))
    f.relevant(LinkEvent(BR, name="bp-a"))
    assert f.relevant(LinkEvent(PORT, master=BR, flags=UNSET))  # flags differ now
