"""`IPromise`: the zope.interface that promise plugins of the SlapOS ecosystem declare
(`@implementer(interface.IPromise)` on their `RunPromise` class).

Used when the software release does not bring its own slapos.core; a release that does gets its
own module (see `slapos.grid.promise_plugin`, which runs plugins with the release's eggs first).
"""
from __future__ import annotations

from zope.interface import Interface


class IPromise(Interface):
    """What the node calls on a promise plugin."""

    def __init__(config):  # noqa: N805 - zope.interface describes methods without self
        """Build the promise from the node's configuration dict (see GenericPromise)."""

    def sense():
        """Look at the instance and log what was seen (errors mean trouble)."""

    def test():
        """After a deployment: return a TestResult."""

    def anomaly():
        """On a periodic check: return an AnomalyResult."""
