"""Training and fine-tuning: the Darknet loss (:mod:`.loss`), the lr schedule (:mod:`.schedule`), one epoch
(:mod:`.engine`), transfer from pretrained files (:mod:`.transfer`, :mod:`.pretrained`), k-means anchors
(:mod:`.anchors`) and the whole run as one call (:mod:`.trainer`)."""
