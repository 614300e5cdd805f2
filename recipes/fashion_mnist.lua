#!/usr/bin/env lua5.4
--- Train on Fashion-MNIST with the C training loop and report test accuracy.
--   lua5.4 recipes/fashion_mnist.lua --model mlp   (784-256-128-100-10; README row: 0.883)
--   lua5.4 recipes/fashion_mnist.lua --model cnn   (two conv + pooling; README row: 0.916)
-- Prints one line per epoch, and as its last line one JSON object with model,
-- test_accuracy, epochs, seconds and the settings used.
package.path = "./?.lua;./?/init.lua;" .. package.path
local argparse = require "argparse"
local cjson = require "cjson"
local lps = require "lualps"
local nn, optim, data = lps.nn, lps.optim, lps.data

local p = argparse("fashion_mnist", "Train an MLP or a CNN on Fashion-MNIST")
p:option("--model", "mlp or cnn", "mlp"):choices{"mlp", "cnn"}
p:option("--epochs", "epochs (default: mlp 30, cnn 15)"):convert(tonumber)
p:option("--batch-size", "minibatch size", "128"):convert(tonumber)
p:option("--lr", "peak learning rate (AdamW, cosine decay to 0)", "1e-3"):convert(tonumber)
p:option("--weight-decay", "AdamW's decoupled weight decay", "1e-4"):convert(tonumber)
p:option("--seed", "seed of initialisation and shuffling", "1"):convert(tonumber)
p:option("--threads", "BLAS threads", "1"):convert(tonumber)
p:option("--val", "hold out this many training images for validation (0: train on all)", "0"):convert(tonumber)
p:option("--data", "Fashion-MNIST directory (default: $LUALPS_DATA or Debian's)")
p:flag("--quiet", "no per-epoch lines")
local args = p:parse()

lps.set_num_threads(args.threads)
local epochs = args.epochs or (args.model == "mlp" and 30 or 15)
local gen = lps.generator(args.seed)

local xtr, ytr = data.fashion_mnist("train", args.data)
local xte, yte = data.fashion_mnist("test", args.data)
local xva, yva
if args.val > 0 then xtr, ytr, xva, yva = data.split(xtr, ytr, args.val, gen) end

local model
if args.model == "mlp" then
  model = nn.mlp{784, 256, 128, 100, 10, generator = gen}
else
  local function img(x) return x:reshape(x:size(1), 1, 28, 28) end
  xtr, xte = img(xtr), img(xte)
  if xva then xva = img(xva) end
  model = nn.sequential{
    nn.conv2d(1, 32, 3, {padding = 1, generator = gen}), nn.relu(), nn.maxpool2d(2),
    nn.conv2d(32, 64, 3, {padding = 1, generator = gen}), nn.relu(), nn.maxpool2d(2),
    nn.flatten(), nn.linear(64 * 7 * 7, 128, gen), nn.relu(), nn.linear(128, 10, gen),
  }
end
io.stderr:write(tostring(model), "\n")
io.stderr:write(("%d parameters, %d training images, %d epochs\n"):format(model:num_parameters(),
  xtr:size(1), epochs))

-- The bar on a terminal; a line per finished epoch on stdout.
local bar, bar_handle
if lps.isatty(2) then bar, bar_handle = lps.util.epoch_progress() end
local _ <close> = bar_handle
local function progress(pr)
  if bar then bar(pr) end
  if pr.done and not args.quiet then
    print(("epoch %2d  loss %.4f  train acc %.4f%s  lr %.2e  %.1fs"):format(pr.epoch, pr.loss, pr.accuracy,
      pr.val_accuracy and ("  val acc %.4f"):format(pr.val_accuracy) or "", pr.lr, pr.seconds))
    io.stdout:flush()
  end
end
local report = lps.train(model, {x = xtr, y = ytr}, {
  optimizer = optim.adamw{lr = args.lr, weight_decay = args.weight_decay},
  schedule = optim.cosine{t_max = epochs, per_batch = true},
  epochs = epochs, batch_size = args.batch_size, generator = gen,
  validation = xva and {x = xva, y = yva} or nil, progress = progress,
})
local acc, loss = lps.evaluate(model, {x = xte, y = yte})
print(cjson.encode{
  model = args.model, test_accuracy = acc, test_loss = loss, epochs = epochs,
  seconds = report.seconds, train_accuracy = report.accuracy, train_loss = report.loss,
  val_accuracy = report.val_accuracy, batch_size = args.batch_size, lr = args.lr,
  weight_decay = args.weight_decay, seed = args.seed, threads = args.threads,
  parameters = model:num_parameters(), samples_per_second = report.samples_per_second,
  arch = (model:arch()),
})
