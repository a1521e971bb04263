"""labgrid places as devices (``--device labgrid:PLACE``): the lab's coordinator locks the board
while edgekit measures on it. labgrid itself is imported only when such a device is used.
"""

from edgekit.devices.lab.client import LabClient, PlaceView, list_places
from edgekit.devices.lab.places import PREFIX, LabPlace, is_lab, place_spec, with_inventory

__all__ = ["PREFIX", "LabClient", "LabPlace", "PlaceView", "is_lab", "list_places", "place_spec",
           "with_inventory"]
