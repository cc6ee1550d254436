"""torchport.deploy — packs an existing model package (wheels, containers, manifests). No torch."""
