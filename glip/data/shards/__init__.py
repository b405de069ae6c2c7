"""Streaming shard sets: tar shards of image + json record (the webdataset / img2dataset
layout), a manifest per set, and the split of an epoch over nodes x processes x workers.

``webdataset`` is imported only when a shard is read or written.
"""

from glip.data.shards.layout import Piece, SlotPlan, epoch_shard_order, plan_slots, slot_pieces, unread_spans
from glip.data.shards.manifest import KINDS, MANIFEST_NAME, Manifest, ShardEntry, open_shard_set
from glip.data.shards.schema import SCHEMA_VERSION, RecordError, make_record, record_from_members, validate_record
from glip.data.shards.stream import ShardStream, decode_image
from glip.data.shards.tario import ShardError, ShardWriter, iter_shard

__all__ = [
    "KINDS",
    "MANIFEST_NAME",
    "SCHEMA_VERSION",
    "Manifest",
    "Piece",
    "RecordError",
    "ShardEntry",
    "ShardError",
    "ShardStream",
    "ShardWriter",
    "SlotPlan",
    "decode_image",
    "epoch_shard_order",
    "iter_shard",
    "make_record",
    "open_shard_set",
    "plan_slots",
    "record_from_members",
    "slot_pieces",
    "unread_spans",
    "validate_record",
]
