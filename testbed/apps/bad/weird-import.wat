;; A valid component that imports an interface Outpost does not provide. Outpost must refuse to
;; instantiate it with an error naming the missing import, instead of failing at request time.
(component
  (import "acme:secret/vault@1.0.0" (instance
    (export "open" (func)))))
