-- The ModelSet500 task table: data, not code. 20 binary tasks over the ten
-- Fashion-MNIST classes (0-based ids as in the dataset: 0 T-shirt, 1 Trouser,
-- 2 Pullover, 3 Dress, 4 Coat, 5 Sandal, 6 Shirt, 7 Sneaker, 8 Bag, 9 Ankle
-- boot). Every class appears in exactly 4 tasks (the pairs at distance 1 and
-- 3 around the circle of classes), so two tasks are related when they share
-- a class. Label 1 of a task is its first class, label 2 its second.
return {
  class_names = {[0] = "T-shirt", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"},
  tasks = {
    {id = 1,  classes = {0, 1}}, {id = 2,  classes = {1, 2}},
    {id = 3,  classes = {2, 3}}, {id = 4,  classes = {3, 4}},
    {id = 5,  classes = {4, 5}}, {id = 6,  classes = {5, 6}},
    {id = 7,  classes = {6, 7}}, {id = 8,  classes = {7, 8}},
    {id = 9,  classes = {8, 9}}, {id = 10, classes = {9, 0}},
    {id = 11, classes = {0, 3}}, {id = 12, classes = {1, 4}},
    {id = 13, classes = {2, 5}}, {id = 14, classes = {3, 6}},
    {id = 15, classes = {4, 7}}, {id = 16, classes = {5, 8}},
    {id = 17, classes = {6, 9}}, {id = 18, classes = {7, 0}},
    {id = 19, classes = {8, 1}}, {id = 20, classes = {9, 2}},
  },
}
