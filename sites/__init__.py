"""A hospital's Flower client (ClientApp): reads its node config, runs baps_fed's local rounds."""
