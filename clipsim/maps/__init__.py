"""The embedding map: UMAP computed as a job (`compute`), stored with its config (`store`), and what the Map page
draws and selects (`view`, `rows`)."""
