"""ModelArts compatibility: the engine base classes of `model_service.*`, all `modelport.BaseService`.

ModelArts inference code imports its parent class from these modules (spec §3.3); they exist so
such code runs unmodified. Each class only names the engine; none calls an engine itself, so a
package must override `_inference` (or load and call its model in the hooks) as usual.
"""
