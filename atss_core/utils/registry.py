"""A name -> object mapping that modules register themselves into.

Config strings such as ``MODEL.BACKBONE.CONV_BODY`` select an entry by name, so new
variants plug in with a decorator instead of an ``if`` chain::

    BACKBONES = Registry()

    @BACKBONES.register("R-50-FPN-RETINANET")
    def build_resnet_fpn_p3p7_backbone(cfg):
        ...

    BACKBONES["R-50-FPN-RETINANET"](cfg)
"""


class Registry(dict):
    """A ``dict`` whose entries are added with :meth:`register`, which refuses duplicates."""

    def register(self, name, obj=None):
        """Register ``obj`` under ``name``; without ``obj``, return a decorator that does it.

        Raises:
            KeyError: ``name`` is already taken (two modules claiming one config string is
                always a bug, so it is not silently overwritten).
        """
        if obj is not None:
            self._add(name, obj)
            return obj

        def decorator(fn):
            self._add(name, fn)
            return fn

        return decorator

    def _add(self, name, obj):
        if name in self:
            raise KeyError(f"'{name}' is already registered ({self[name]!r}); "
                           "pick a different name")
        self[name] = obj
