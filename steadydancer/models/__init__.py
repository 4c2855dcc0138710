"""models stage: the SteadyDancer DiT (dit.py), its pose modules (pose_modules.py), attention
backends (attention.py) and checkpoint loading/saving in the released layout (loading.py)."""
