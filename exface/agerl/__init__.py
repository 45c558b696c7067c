"""exface agerl: age editing by a reinforcement-learning policy in the latent space (Shubham et al., arXiv 2011.00954).

``env``: the batched MDP and the driver of every editor; ``mdp``: the policy's observation
and action; ``module``: PPO (TorchRL) as a Lightning run; ``editors``: the gradient walk and
the trained policy as editors; ``report``: ``exface age-report``.
"""

from exface._autoimport import import_submodules

__all__ = import_submodules(__name__, globals())
