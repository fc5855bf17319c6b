"""zope.interface declarations of the SLAP client API (what recipes and tools may rely on)."""
from __future__ import annotations

from zope.interface import Attribute, Interface


class IException(Interface):
    """Marker of the SLAP exception classes."""


class ISlap(Interface):
    """Entry point: a connection to a master and factories for the objects below."""

    def initializeConnection(
        slapgrid_uri, key_file=None, cert_file=None, master_ca_file=None, timeout=60, insecure=False
    ):
        """Remember the master URL and credentials; no network traffic until the first call."""

    def registerComputer(computer_guid):
        """A Computer bound to this connection."""

    def registerComputerPartition(computer_guid, partition_id):
        """A ComputerPartition bound to this connection (fetched lazily)."""

    def registerSoftwareRelease(software_release):
        """A SoftwareRelease bound to this connection."""

    def registerOpenOrder():
        """An OpenOrder (requests instances as a user)."""

    def registerSupply():
        """A Supply (asks a computer to install or remove a software release)."""

    def getSoftwareReleaseListFromSoftwareProduct(software_product_reference=None, software_release_url=None):
        """Software release URLs of a software product, best first."""


class IComputer(Interface):
    """The node as the master sees it."""

    def getComputerPartitionList():
        """Every partition of the computer, from one getFullComputerInformation call."""

    def getSoftwareReleaseList():
        """Software releases the computer should hold, with their requested state."""

    def reportUsage(computer_usage):
        """Send the usage journal (XML text); nothing is sent for an empty journal."""

    def bang(message):
        """Ask the master to reprocess every partition of the computer."""

    def updateConfiguration(xml):
        """Send the formatted computer definition (a dict, or its marshalled XML)."""

    def getStatus():
        """The master's view of the computer's status."""


class ISoftwareRelease(Interface):
    """A software release URL on a computer."""

    def getURI():
        """The software release URL."""

    def getComputerId():
        """The computer holding it."""

    def getState():
        """Requested state: 'available' or 'destroyed'."""

    def building():
        """Report that building started."""

    def available():
        """Report that the software release is built."""

    def destroyed():
        """Report that the software release was removed."""

    def error(error_log, logger=None):
        """Report a build failure (never raises)."""


class IComputerPartition(Interface):
    """A partition (an instance) of a computer."""

    def request(software_release, software_type, partition_reference, shared=False,
                partition_parameter_kw=None, filter_kw=None, state=None):
        """Request (create or update) a child instance on behalf of this partition."""

    def building():
        """Report that the instance is being built."""

    def available():
        """Report that the instance is built."""

    def started():
        """Report that the instance is started."""

    def stopped():
        """Report that the instance is stopped."""

    def destroyed():
        """Report that the instance was destroyed on the node."""

    def error(error_log, logger=None):
        """Report an error of this instance (never raises)."""

    def bang(message):
        """Ask the master to reprocess the whole instance tree."""

    def rename(new_name, slave_reference=None):
        """Rename the instance."""

    def getId():
        """Partition id (raises ResourceNotReady for an instance not allocated yet)."""

    def getInstanceGuid():
        """The master's id of the instance."""

    def getState():
        """Requested state (for a shared instance: the state of its hosting partition)."""

    def getRequestedState():
        """Requested state of this instance as the master sent it."""

    def getType():
        """Software type."""

    def getSoftwareRelease():
        """The SoftwareRelease the instance runs (None for a free partition)."""

    def getInstanceParameterDict():
        """Instance parameters (plus the keys the master adds)."""

    def getInstanceParameter(key):
        """One instance parameter; NotFoundError if absent."""

    def getConnectionParameterDict():
        """Published connection parameters."""

    def getConnectionParameter(key):
        """One connection parameter; NotFoundError if absent."""

    def setConnectionDict(connection_dict, slave_reference=None):
        """Publish connection parameters (no call when they did not change)."""

    def getCertificate():
        """The partition's certificate and key: {'certificate': PEM, 'key': PEM}."""


class IOpenOrder(Interface):
    """Requests instances as a user."""

    def request(software_release, partition_reference, partition_parameter_kw=None, software_type=None,
                filter_kw=None, state=None, shared=False):
        """Request (create or update) an instance; returns a ComputerPartition."""


class ISupply(Interface):
    """Asks a computer to install or remove a software release."""

    def supply(software_release, computer_guid=None, state="available"):
        """state is 'available' (install) or 'destroyed' (remove)."""


class ISoftwareInstance(Interface):
    """The raw answer of requestComputerPartition."""

    slap_computer_id = Attribute("computer hosting the instance")
    slap_computer_partition_id = Attribute("partition hosting the instance")
