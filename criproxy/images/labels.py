"""Label keys containerd's garbage collector and its own clients read, and those of CRI.

Setting the same labels as containerd's client makes our images first-class citizens:
its GC keeps what an image references and frees the rest, and `ctr` works with them.
"""

GC_CONTENT_CONFIG = "containerd.io/gc.ref.content.config"
GC_CONTENT_LAYER = "containerd.io/gc.ref.content.l.{index}"
GC_CONTENT_MANIFEST = "containerd.io/gc.ref.content.m.{index}"
GC_SNAPSHOT = "containerd.io/gc.ref.snapshot.{snapshotter}"
UNCOMPRESSED = "containerd.io/uncompressed"
DISTRIBUTION_SOURCE = "containerd.io/distribution.source.{host}"
SNAPSHOT_REF = "containerd.io/snapshot.ref"

CRI_IMAGE = "io.cri-containerd.image"
CRI_IMAGE_MANAGED = "managed"
CRI_PINNED = "io.cri-containerd.pinned"
CRI_PINNED_VALUE = "pinned"
