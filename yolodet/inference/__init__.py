"""Images in, boxes out: preprocessing (:mod:`.preprocess`, with the mapping back to original pixels), decoding
(:mod:`.decode`), candidates and NMS (:mod:`.postprocess`), the optimised inference copy (:mod:`.optimize`,
:mod:`.winograd`), the :class:`~yolodet.inference.detector.Detector`, and prediction over files, folders, videos
and streams (:mod:`.sources`, :mod:`.loader`, :mod:`.predict`, :mod:`.writers`, :mod:`.draw`).

Never imports :mod:`yolodet.training`."""
