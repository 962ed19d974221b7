"""The tracker's config groups (``siamrpn/backbone``, ``siamrpn/head``, ``experiment/siamrpn_demo``).

``conf/siamrpn.yaml`` adds this package to Hydra's search path, so that ``scripts/train_tracker.py`` sees these
groups beside the shared ones of ``conf/`` (optim, schedule, trainer) and ``scripts/train.py`` does not: the
detector's ``--help`` lists the detector's groups only.
"""
