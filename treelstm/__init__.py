"""treelstm: Tree-LSTMs (Tai, Socher & Manning 2015) batched level by level in PyTorch."""
