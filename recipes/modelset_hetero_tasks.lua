-- The ModelSet-Hetero task table: data, not code. Ten subsets of 2 to 5
-- Fashion-MNIST classes (0-based: 0 T-shirt, 1 Trouser, 2 Pullover, 3 Dress,
-- 4 Coat, 5 Sandal, 6 Shirt, 7 Sneaker, 8 Bag, 9 Ankle boot), each seen in
-- four image domains: 40 tasks. Two tasks share 0 to all of their classes
-- and may share the domain. Every class is in 2 to 4 subsets (8 to 16
-- tasks), every domain in 10 tasks. Bag and Ankle boot (8, 9) occur only in
-- subsets 8-10, so holding them out keeps 28 tasks for training.
-- Label k of a task is its k-th class.
return {
  class_names = {[0] = "T-shirt", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"},
  domains = {"identity", "invert", "rot90", "blur"}, -- of lps.data.domains (downup left out)
  subsets = {
    {0, 1},             -- 1  T-shirt, Trouser
    {2, 4, 6},          -- 2  Pullover, Coat, Shirt (the hard one)
    {5, 7},             -- 3  Sandal, Sneaker
    {0, 2, 3},          -- 4  T-shirt, Pullover, Dress
    {1, 3, 4, 5},       -- 5  Trouser, Dress, Coat, Sandal
    {0, 6, 7},          -- 6  T-shirt, Shirt, Sneaker
    {1, 2, 5, 6, 7},    -- 7  Trouser, Pullover, Sandal, Shirt, Sneaker
    {3, 8, 9},          -- 8  Dress, Bag, Ankle boot
    {4, 5, 8},          -- 9  Coat, Sandal, Bag
    {0, 1, 7, 9},       -- 10 T-shirt, Trouser, Sneaker, Ankle boot
  },
  heldout_classes = {8, 9},
  -- Widths and channel counts no training model of split (d) has.
  mlp_widths = {32, 48, 64, 96, 128, 192, 256},
  heldout_widths = {48, 192},
  cnn_channels = {4, 6, 8, 12, 16, 24, 32},
  heldout_channels = {6, 24},
}
