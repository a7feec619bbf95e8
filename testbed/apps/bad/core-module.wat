;; A plain core module, not a component. Outpost must reject it at load time with an error
;; that says "not a component", not trap or panic while compiling it.
(module
  (func (export "_start")))
