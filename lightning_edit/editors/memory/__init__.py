"""Methods that add to the model instead of rewriting its weights: a memory (T-Patcher's neurons, GRACE's codebook,
WISE's side memory, CaliNET's calibration FFN) or demonstrations in the prompt (IKE). Every such addition is a patch
in the model's patch registry (``LoadedModel.patches``). SERAC, whose router is such a patch too, is a learnt method
(``editors/learned/serac/``). Importing this package registers the methods."""
from . import calinet, grace, ike, tpatcher, wise  # noqa: F401
