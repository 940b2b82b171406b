package protocol

// Adopt replaces the controller's replica of device id with r, as another
// controller instance stored it (one shared database, several instances,
// each device owned by one): the instance that takes a device over, or
// writes one it does not own, starts from the state last committed
// instead of its own older copy. A nil r forgets the device.
func (c *Controller) Adopt(id string, r *Replica) {
	if r == nil {
		c.Forget(id)
		return
	}
	r = r.Clone()
	r.Side = ControllerSide
	if r.Props == nil {
		r.Props = Props{}
	}
	c.devices[id] = r
	delete(c.greet, id)
}

// Rebase replaces the controller's replica of device id with stored,
// another instance's newer record of it, then receives again since, the
// latest message this controller took for the device after it last stored
// it (nil if none). It is how the owner of a device recovers when another
// instance wrote the device while the owner held changes it had not stored
// yet: both counted the controller's entry on from the same stored value,
// so one clock may now name two different states, and receiving the stored
// record by the clock rules would take the other's write for a duplicate.
// Every message carries its sender's whole state, so receiving the latest
// again restores all the owner had taken. Commands made from the discarded
// clock must not have been published (the fleet stores before it
// publishes); a greeting not yet sent stays owed.
func (c *Controller) Rebase(id string, stored *Replica, since *Message) (Outcome, error) {
	r := stored.Clone()
	r.Side = ControllerSide
	if r.Props == nil {
		r.Props = Props{}
	}
	c.devices[id] = r
	if since == nil {
		return Outcome{Duplicate: true}, nil
	}
	return r.Receive(*since)
}
