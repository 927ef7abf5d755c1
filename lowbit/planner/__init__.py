"""The nano-batch planner (issue 7): the operations of a model at a dense batch, a roofline cost model per
kernel with hardware presets, a discrete-event simulator of a pipeline plan on a device, a two-stage search,
and the report `lowbit plan` prints. See README.md in this directory."""
